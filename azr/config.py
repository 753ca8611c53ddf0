"""The run configuration: one pydantic model, loaded from YAML, overridable with ``--set``.

Every field is typed, defaulted and described where it is declared; the descriptions are what
`azr config show`, the README table and the Prefect UI form show. Unknown keys are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TaskType = Literal["abduction", "deduction", "induction"]
TASK_TYPES: tuple[str, ...] = ("abduction", "deduction", "induction")

DEFAULT_BANNED_MODULES = [
    "random", "time", "datetime", "os", "sys", "subprocess", "socket", "threading",
    "multiprocessing", "asyncio", "signal", "shutil", "pathlib", "io", "importlib",
    "ctypes", "builtins", "gc", "inspect", "pickle", "marshal", "tempfile", "urllib",
    "http", "requests", "uuid", "secrets", "resource", "pty", "fcntl", "mmap", "sched",
    "concurrent", "code", "codeop", "pdb", "faulthandler", "sysconfig", "site",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending key."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights.")
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (lora_alpha).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names that get adapters.",
    )


class ModelConfig(Section):
    name_or_path: str = Field(
        "smollm2-135m-instruct",
        description="Built-in name (smollm2-135m-instruct, tiny-random), a hub id, a local HF directory or a .gguf file.",
    )
    cache_dir: str = Field(
        "~/.cache/azr/models", description="Where converted built-in models are cached (AZR_CACHE_DIR overrides)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for training, and for generation unless generation_dtype says otherwise."
    )
    generation_dtype: Literal["same", "auto", "float32", "bfloat16", "float16"] = Field(
        "same",
        description=(
            "Weights dtype for generation (propose, solve, eval). same: dtype. auto: bfloat16 where the hardware "
            "runs it natively (a CUDA GPU with bf16, a CPU with AMX or AVX512-BF16), else dtype. When it differs "
            "from dtype, the train step takes its own log-probs as the PPO old ones instead of the recorded ones."
        ),
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the training step.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA fine-tuning settings.")


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(
        512, gt=0,
        description="Longest generation, in tokens: the whole answer with answer_format free, each field the model "
        "writes otherwise (fields also have their own bounds: program 192, value 64, message 48).",
    )
    batch_size: int = Field(16, gt=0, description="Prompts per generate() call; bounds generation memory.")
    max_prompt_tokens: int = Field(
        2048, gt=0,
        description="Longest prompt. A proposer prompt drops references to fit; a task whose solver prompt "
        "would not fit is rejected (prompt_too_long). Prompts are never cut.",
    )
    stop_strings: list[str] = Field(
        default_factory=lambda: ["</answer>"],
        description="With generation.answer_format free: a generation ends once its text contains one of these "
        "(kept in the text), or at EOS.",
    )


class GenerationConfig(Section):
    answer_format: Literal["free", "prefill", "grammar"] = Field(
        "grammar",
        description="Who writes what in an answer. free: the model writes it all (reasoning, tags, blocks). "
        "prefill: azr writes the answer's scaffold (tags, fence labels, 'def f('), the model writes only the "
        "fields (program, input, output, message). grammar: prefill, and each field is constrained by a grammar "
        "(a program that parses, literals, one argument per parameter of f). azr's scaffold is never trained on.",
    )


class LadderConfig(Section):
    syntax: float = Field(-0.75, le=0.0, description="The program does not parse (or defines no f).")
    runtime: float = Field(-0.5, le=0.0, description="It parses but fails on its input (error, timeout, memory limit).")
    impure: float = Field(
        -0.25, le=0.0,
        description="It runs but is not a task: nondeterministic, impure, a banned import, or a value that is not plain data.",
    )


class RewardsConfig(Section):
    n_samples: int = Field(8, gt=0, description="Solver rollouts per task; also the Monte Carlo samples for learnability.")
    learnability_weight: float = Field(1.0, ge=0.0, description="Weight of the learnability reward in the proposer total.")
    diversity_weight: float = Field(0.0, ge=0.0, description="Weight of the diversity reward in the proposer total.")
    complexity_weight: float = Field(0.0, ge=0.0, description="Weight of the complexity reward in the proposer total.")
    learnability_at_extremes: float = Field(
        0.0, description="Learnability when the solve rate is 0 or 1 (paper: 0; reference code: -0.5)."
    )
    invalid_penalty: float = Field(
        -1.0, le=0.0, description="Proposer reward for a proposal that cannot be read (no program or input: a format error)."
    )
    wrong_task_penalty: float = Field(
        -0.5, le=0.0,
        description="Proposer reward for a readable proposal that is not a valid task, outside force acceptance "
        "(the paper's 'wrong but well formatted').",
    )
    ladder: LadderConfig = Field(
        default_factory=LadderConfig,
        description="Under force acceptance: proposer rewards for invalid proposals by how far they got, so that "
        "the proposer has a direction to climb (a proposal that cannot be read gets invalid_penalty).",
    )
    wrong_format_penalty: float = Field(-0.5, le=0.0, description="Solver reward: wrong but well formed (outside force acceptance).")
    malformed_penalty: float = Field(-1.0, le=0.0, description="Solver reward: malformed answer (outside force acceptance).")
    advantage_eps: float = Field(1e-6, gt=0.0, description="Epsilon in the TRR++ normalisation (r - mean) / (std + eps).")


class ExecutorConfig(Section):
    backend: Literal["auto", "docker", "process"] = Field(
        "auto", description="Sandbox backend: docker when the daemon answers and the image exists, else process."
    )
    image: str = Field(
        "azr-executor",
        description="Docker image of the sandbox (azr sandbox build). Without a tag, the tag is the runner's digest, "
        "so checkouts with different runners on one daemon each keep their own image.",
    )
    pool_size: int | None = Field(None, gt=0, description="Warm workers/containers; default: CPU count.")
    timeout_seconds: float = Field(5.0, gt=0.0, description="Wall-clock limit per program run.")
    cpu_seconds: int = Field(5, gt=0, description="CPU-time limit per program run.")
    memory_mb: int = Field(256, gt=0, description="Address-space limit per program run, MiB.")
    container_memory_mb: int = Field(1024, gt=0, description="Memory limit per sandbox container, MiB.")
    determinism_runs: int = Field(2, gt=0, description="Calls per validation that must agree (one fresh child).")
    max_output_chars: int = Field(10_000, gt=0, description="Longest output repr returned by the sandbox.")
    worker_slots: int = Field(4, gt=0, description="Programs each worker/container runs at once (one forked child each).")
    container_cpus: float = Field(1.0, gt=0.0, description="CPU limit per sandbox container.")
    docker_transport: Literal["auto", "socket", "attach"] = Field(
        "auto",
        description="How the host talks to a container's runner: socket (a Unix socket mounted read-only into it; "
        "fastest), attach (stdin/stdout relayed by the daemon; works with remote daemons). auto: socket when the "
        "daemon runs on this Linux machine, else attach.",
    )
    banned_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BANNED_MODULES),
        description="Modules a program may not import (checked on the AST, including __import__/importlib).",
    )


class ValidationConfig(Section):
    min_complexity: float = Field(0.0, ge=0.0, description="Minimum normalised complexity once force acceptance is over.")
    max_output_chars: int = Field(1000, gt=0, description="Longest gold output repr accepted once force acceptance is over.")
    induction_num_inputs: int = Field(10, gt=1, description="Inputs the induction proposer writes; half are shown.")


class BufferConfig(Section):
    references: int = Field(6, ge=0, description="K reference triplets sampled from the buffer per proposal.")
    max_size: int = Field(5000, gt=0, description="Most tasks kept in the buffer (oldest seed tasks are kept first).")


class TrainingConfig(Section):
    enabled: bool = Field(True, description="Run the policy update; off gives a self-play run without learning.")
    learning_rate: float = Field(1e-6, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    clip_ratio: float = Field(0.2, gt=0.0, description="PPO-style clip of the probability ratio.")
    entropy_coef: float = Field(0.001, ge=0.0, description="Entropy bonus coefficient.")
    kl_coef: float = Field(0.0, ge=0.0, description="KL penalty to the initial model; 0 = off.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    micro_batch_size: int = Field(4, gt=0, description="Samples per forward/backward; bounds training memory.")
    keep_checkpoints: int = Field(
        2, ge=0,
        description="Older checkpoints kept besides the newest one, as policies: weights in model.generation_dtype, "
        "without the optimizer state (only the newest checkpoint keeps what resuming needs).",
    )
    keep_policies: bool = Field(
        False,
        description="Keep every iteration's policy (overrides keep_checkpoints), e.g. to evaluate each iteration "
        "later: weights in model.generation_dtype, no optimizer state (SmolLM2-135M in bfloat16: about 270 MB each).",
    )
    warmup_steps: int = Field(0, ge=0, description="Iterations of linear learning-rate warmup (from 0); then constant.")
    balance_roles: bool = Field(
        True,
        description="Weigh the roles equally in the loss: each role's loss is the mean over its own tokens, and the "
        "loss is the mean over roles (as the reference trains proposer and solver in equal numbers). Off: one mean "
        "over every token, so the n solver rollouts per task outweigh the proposals.",
    )


class TrackingConfig(Section):
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: SQLite at <runs_dir>/mlflow.db."
    )
    experiment: str = Field("azr", description="MLflow experiment name.")
    log_artifacts: bool = Field(True, description="Log Parquet files and train.json as MLflow artifacts.")


class OrchestrationConfig(Section):
    runs_dir: str = Field("runs", description="Parent directory of run directories.")
    run_name: str | None = Field(None, description="Run directory name; default: azr-<timestamp>.")
    task_retries: int = Field(1, ge=0, description="Prefect retries of a stage task on a transient error.")
    retry_delay_seconds: float = Field(2.0, ge=0.0, description="Delay between Prefect retries.")


class EvalConfig(Section):
    every: int = Field(0, ge=0, description="Evaluate every N iterations (and before the first); 0 = off.")
    limit: int | None = Field(None, gt=0, description="Problems per held-out set; default: all.")
    sets: list[str] = Field(
        default_factory=lambda: ["heldout"],
        description="Held-out sets: 'heldout' (shipped, one per task type) or JSONL files (CRUXEval format, or induction programs with inputs).",
    )
    task_types: list[TaskType] = Field(
        default_factory=lambda: ["abduction", "deduction", "induction"], description="Task types (modes) to evaluate."
    )
    samples: int = Field(1, gt=0, description="Answers per problem: 1 = greedy; more = sampled at sampling.temperature.")
    pass_k: list[int] = Field(
        default_factory=lambda: [1, 5, 10], description="k values reported as pass@k (those <= samples)."
    )
    max_new_tokens: int | None = Field(None, gt=0, description="Longest answer, in tokens; default: sampling.max_new_tokens.")
    strict: bool = Field(False, description="Require <answer> tags when parsing answers; lenient parsing (the default) scores the value.")

    @field_validator("pass_k")
    @classmethod
    def _positive_k(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("must list k values >= 1")
        return sorted(set(value))

    @field_validator("sets", "task_types")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one entry")
        return value


class AZRConfig(Section):
    """A whole AZR run. The six top-level keys are AZR's documented knobs."""

    seed: int = Field(0, description="Run seed; every stage derives its own from (seed, iteration, stage).")
    num_iterations: int = Field(100, gt=0, description="Self-play iterations in the run.")
    tasks_per_iteration: int = Field(5, gt=0, description="Proposals per iteration (and the solve batch size).")
    task_types: list[TaskType] = Field(
        default_factory=lambda: ["abduction", "deduction", "induction"], description="Task types to propose."
    )
    task_distribution: list[float] = Field(
        default_factory=lambda: [0.3, 0.3, 0.4], description="Probability of each entry of task_types."
    )
    force_accept_tasks: bool = Field(True, description="Waive quality checks early in the run (see force_accept_threshold).")
    force_accept_threshold: int = Field(50, ge=0, description="Force acceptance applies while iteration <= threshold.")

    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling settings.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description="How answers are generated.")
    rewards: RewardsConfig = Field(default_factory=RewardsConfig, description="Reward weights and penalties.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="Sandbox settings.")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="Task quality checks.")
    buffer: BufferConfig = Field(default_factory=BufferConfig, description="Task buffer.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Policy update.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking.")
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig, description="Run directory and Prefect.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation during training.")

    @field_validator("task_types")
    @classmethod
    def _no_duplicate_types(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one task type")
        duplicates = sorted({t for t in value if value.count(t) > 1})
        if duplicates:
            raise ValueError(f"duplicate task types: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _distribution_matches_types(self) -> "AZRConfig":
        dist = self.task_distribution
        if len(dist) != len(self.task_types):
            raise ValueError(
                f"task_distribution has {len(dist)} entries but task_types has {len(self.task_types)}"
            )
        if any(p < 0 or not math.isfinite(p) for p in dist):
            raise ValueError("task_distribution entries must be finite and >= 0")
        if abs(sum(dist) - 1.0) > 1e-6:
            raise ValueError(f"task_distribution sums to {sum(dist):.6g}, not 1")
        return self

    def is_forced(self, iteration: int) -> bool:
        """True when force acceptance applies at this iteration (DESIGN.md section 5)."""
        return self.force_accept_tasks and iteration <= self.force_accept_threshold

    def config_hash(self) -> str:
        """Hash of the settings that decide what stages compute (orchestration/tracking excluded)."""
        payload = self.model_dump(mode="json", exclude={"orchestration", "tracking"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Errors raised by _distribution_matches_types are about these keys; pydantic reports them at the root.
_ROOT_ERROR_KEYS = ("task_distribution",)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or _ROOT_ERROR_KEYS[0]
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{key}: {message}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` applied; unknown keys fail later, by name."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, not {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> AZRConfig:
    """Validate a mapping (plus overrides) into an AZRConfig, or raise ConfigError naming each bad key."""
    # Overrides land on the defaults-filled mapping so `--set a.b=1` can tell a section from a value.
    data = apply_overrides(_deep_merge(AZRConfig().model_dump(mode="json"), data), list(overrides))
    try:
        return AZRConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(err)}") from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AZRConfig:
    """The one config loader: YAML file (optional) + ``--set`` overrides -> validated AZRConfig."""
    data = read_yaml(path) if path is not None else {}
    return build_config(data, overrides, source=str(path) if path else "config")


def dump_config(config: AZRConfig) -> str:
    """Resolved config as YAML (what a run directory stores and `azr config show` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def commented_yaml(config: AZRConfig) -> str:
    """YAML of every key with its description as a comment (how configs/default.yaml is made)."""
    lines: list[str] = []

    def emit(model: BaseModel, indent: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            comment = f"  # {field.description}" if field.description else ""
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:{comment}")
                emit(value, indent + "  ")
            else:
                dumped = json.dumps(value)
                if isinstance(value, float) and "e" in dumped and "." not in dumped:
                    dumped = dumped.replace("e", ".0e")  # YAML 1.1 reads 1e-06 as a string
                lines.append(f"{indent}{name}: {dumped}{comment}")

    emit(config, "")
    return "\n".join(lines) + "\n"
