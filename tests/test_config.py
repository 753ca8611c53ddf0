"""Config: documented defaults, every bad-config case named by key, the --set override syntax."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from azr.config import AZRConfig, ConfigError, commented_yaml, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_documented_defaults():
    cfg = AZRConfig()
    assert cfg.num_iterations == 100
    assert cfg.tasks_per_iteration == 5
    assert cfg.task_types == ["abduction", "deduction", "induction"]
    assert cfg.task_distribution == [0.3, 0.3, 0.4]
    assert cfg.force_accept_tasks is True
    assert cfg.force_accept_threshold == 50


def test_default_yaml_lists_every_key_with_its_default():
    text = (ROOT / "configs" / "default.yaml").read_text()
    assert yaml.safe_load(text) == AZRConfig().model_dump(mode="json")
    body = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert all("  # " in line for line in body), "every key needs a one-line comment"
    assert text.endswith(commented_yaml(AZRConfig())), "regenerate: make default-config"


def test_every_field_has_a_description():
    def walk(model_cls, prefix=""):
        for name, field in model_cls.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, AZRConfig.__mro__[1]):
                walk(ann, f"{prefix}{name}.")

    walk(AZRConfig)


def _schema_fields():
    """(key path, JSON-schema property) of every config field, as the Prefect UI form gets them."""
    schema = AZRConfig.model_json_schema()

    def walk(properties, prefix=""):
        for name, prop in properties.items():
            yield f"{prefix}{name}", prop
            if "$ref" in prop:
                yield from walk(schema["$defs"][prop["$ref"].split("/")[-1]]["properties"], f"{prefix}{name}.")

    return list(walk(schema["properties"]))


def test_every_field_has_a_written_title_for_the_form():
    for key, prop in _schema_fields():
        name = key.split(".")[-1]
        generated = name.replace("_", " ").title()  # what pydantic would make of the key
        assert prop.get("title") and (prop["title"] != generated or " " not in generated), f"{key}: {prop.get('title')!r}"
    titles = dict(_schema_fields())
    assert titles["training.kl_coef"]["title"] == "KL coefficient" and titles["model.lora.r"]["title"] == "LoRA rank"


def test_descriptions_are_plain_text_that_markdown_leaves_as_written():
    """One Prefect UI renders descriptions as Markdown, the other as text: no tag-like <...>,
    no __dunder__ (bold), no backticks, links or emphasis markers."""
    import re

    markdown = re.compile(r"<[A-Za-z/!?]|__|\*|`|\[[^\]]*\]\(|(^|\s)_\w")
    for key, prop in _schema_fields():
        assert not markdown.search(prop["description"]), f"{key}: {prop['description']!r}"


@pytest.mark.parametrize("key, bounds", [
    ("num_iterations", "Must be > 0."),
    ("sampling.top_p", "Range: 0 < value <= 1."),
    ("sampling.temperature", "Must be >= 0."),  # (model.lora.dropout, the one 0 <= value < 1 range, is gone)
    ("rewards.invalid_penalty", "Must be <= 0."),
    ("executor.pool_size", "Must be > 0."),  # optional: the bound sits in anyOf
])
def test_form_descriptions_show_the_bounds(key, bounds):
    description = dict(_schema_fields())[key]["description"]
    assert description.endswith(" " + bounds)
    model, *path, name = [AZRConfig, *key.split(".")]
    for section in path:
        model = model.model_fields[section].annotation
    assert bounds not in model.model_fields[name].description  # the YAML comment stays as written


def test_banned_modules_may_be_one_comma_separated_text():
    config = load_config(overrides=["executor.banned_modules=os, sys  subprocess"])
    assert config.executor.banned_modules == ["os", "sys", "subprocess"]
    assert AZRConfig().executor.banned_modules[:3] == ["random", "time", "datetime"]  # a list by default


@pytest.mark.parametrize(
    "data, key, reason",
    [
        ({"num_iterationz": 3}, "num_iterationz", "unknown key"),
        ({"model": {"nam": "x"}}, "model.nam", "unknown key"),
        ({"num_iterations": "many"}, "num_iterations", "integer"),
        ({"force_accept_tasks": "perhaps"}, "force_accept_tasks", "boolean"),
        ({"num_iterations": 0}, "num_iterations", "greater than 0"),
        ({"tasks_per_iteration": -2}, "tasks_per_iteration", "greater than 0"),
        ({"rewards": {"n_samples": 0}}, "rewards.n_samples", "greater than 0"),
        ({"task_distribution": [0.5, 0.5]}, "task_distribution", "has 2 entries but task_types has 3"),
        ({"task_distribution": [0.3, 0.3, 0.3]}, "task_distribution", "sums to 0.9"),
        ({"task_types": ["deduction", "reduction"], "task_distribution": [0.5, 0.5]}, "task_types.1", "unknown task type 'reduction'; expected one of abduction, deduction, induction"),
        ({"task_types": ["deduction", "deduction"], "task_distribution": [0.5, 0.5]}, "task_types", "duplicate task types: deduction"),
        ({"force_accept_threshold": -1}, "force_accept_threshold", "greater than or equal to 0"),
    ],
)
def test_bad_config_names_key_and_reason(tmp_path, data, key, reason):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    message = str(err.value)
    assert f"{key}: " in message and reason in message, message


def test_distribution_within_tolerance_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path, {"task_distribution": [0.3, 0.3, 0.4 + 5e-7]}))
    assert sum(cfg.task_distribution) == pytest.approx(1.0)


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: top level must be a mapping"):
        load_config(bad)


def test_overrides_parse_yaml_values_and_nested_keys(tmp_path):
    cfg = load_config(
        write(tmp_path, {"num_iterations": 7}),
        [
            "tasks_per_iteration=16",
            "model.lora.enabled=true",
            "sampling.temperature=0.7",
            "task_types=[deduction, abduction]",
            "task_distribution=[0.25, 0.75]",
            "model.name_or_path=tiny-random",
        ],
    )
    assert cfg.num_iterations == 7  # file value kept
    assert cfg.tasks_per_iteration == 16
    assert cfg.model.lora.enabled is True
    assert cfg.sampling.temperature == 0.7
    assert cfg.task_types == ["deduction", "abduction"]
    assert cfg.task_distribution == [0.25, 0.75]
    assert cfg.model.name_or_path == "tiny-random"


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_iterations", "expected key.path=value"),
        ("model.nope=1", "model.nope: unknown key"),
        ("num_iterations.x=1", "num_iterations.x: num_iterations is not a section"),
        ("num_iterations=-1", "num_iterations: Input should be greater than 0"),
    ],
)
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_config_hash_ignores_where_results_go():
    a = load_config(None, ["orchestration.runs_dir=/tmp/a"])
    b = load_config(None, ["orchestration.runs_dir=/tmp/b"])
    c = load_config(None, ["seed=1"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_validate_default_exits_0_and_bad_exits_2(tmp_path):
    ok = run_cli("config", "validate", str(ROOT / "configs" / "default.yaml"))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("config", "validate", str(write(tmp_path, {"task_distribution": [1.0]})))
    assert bad.returncode == 2
    assert "task_distribution" in bad.stderr


def test_cli_show_json_with_override():
    out = run_cli("config", "show", "--json", "--set", "tasks_per_iteration=9")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["tasks_per_iteration"] == 9
    assert shown["force_accept_threshold"] == 50
