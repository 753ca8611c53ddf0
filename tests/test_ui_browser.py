"""The Prefect UI and the MLflow UI as a user sees them, in headless Chromium (Debian's package).

One `prefect server start` with its UI, `azr serve --config configs/smoke.yaml`, a run created
through the API with part of a config (the `api_run` fixture), and `mlflow ui` on that run's
store. Screenshots are kept in $AZR_TEST_ARTIFACTS, or in a directory under pytest's temporary
path whose location the test prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from azr.artifacts import RunDir
from azr.config import AZRConfig, Section
from azr.runs import REJECTION_REASONS, REWARD_COMPONENTS
from azr.tracking import run_link
from tests.conftest import free_port, healthy, stop, wait_until

pytestmark = pytest.mark.slow  # runs azr end to end, a Prefect server, an MLflow server and a browser

CHROMIUM = "/usr/bin/chromium"
# The closed network otherwise produces connection errors and waits.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("AZR_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A page of headless Chromium with a fresh profile."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (CI does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(60_000)
        yield context.new_page()
        context.close()


def _ui(prefect_server: str) -> str:
    return prefect_server.removesuffix("/api")


def _form_fields(model: type, schema: dict) -> list[tuple[str, str]]:
    """(title, description) of every field of the config as the deployment's form schema has them."""
    definitions = schema.get("definitions") or schema.get("$defs")
    fields = []
    properties = definitions[model.__name__]["properties"]
    for name, field in model.model_fields.items():
        fields.append((properties[name]["title"], properties[name]["description"]))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            fields += _form_fields(annotation, schema)
    return fields


@pytest.mark.parametrize("ui", ["v2", "v1"])  # v2 opens from the UI's root; v1 from the link `azr serve` prints
def test_deployment_form_shows_every_field_with_its_full_description(served, prefect_server, page, screenshots, ui):
    client, deployment, _, _ = served
    prefix = "/v2" if ui == "v2" else ""
    page.goto(f"{_ui(prefect_server)}{prefix}/deployments/deployment/{deployment.id}/run")
    page.get_by_text("Banned modules (Optional)").wait_for()
    page.screenshot(path=screenshots / f"prefect-{ui}-form.png", full_page=True)
    text = page.inner_text("body")
    for title, description in _form_fields(AZRConfig, deployment.parameter_openapi_schema):
        assert f"{title} (Optional)" in text, title
        assert description in text, f"{title}: description not shown as written: {description!r}"
    assert "Range: 0 < value <= 1." in text  # bounds are visible (top-p)
    # The 39 banned modules are one line of text, not a row each.
    values = [area.input_value() for area in page.locator("textarea").all()]
    assert any(v.startswith("random, time, datetime, os, sys") for v in values), values


def test_finished_run_page_shows_progress_lines_and_the_iteration_artifact(prefect_server, api_run, page, screenshots):
    flow_run, root = api_run
    page.goto(f"{_ui(prefect_server)}/v2/runs/flow-run/{flow_run.id}")
    page.get_by_text("iteration 1/1 done:", exact=False).first.wait_for()
    page.screenshot(path=screenshots / "prefect-run-logs.png", full_page=True)
    text = page.inner_text("body")
    assert "from-api" in text  # the flow run is named after the run
    for line in (f"run from-api in {root.resolve()}", "sandbox backend: ", "MLflow run http://127.0.0.1:5000/#/experiments/",
                 "iteration 1/1 done: prop 4"):
        assert line in text, line
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("from-api-iteration-1").first.wait_for()
    page.get_by_text("from-api-iteration-1").first.click()
    page.get_by_text("Rejected proposals by reason").first.wait_for()
    page.screenshot(path=screenshots / "prefect-run-artifact.png", full_page=True)
    text = page.inner_text("body")
    assert "from-api: iteration 1 of 1" in text and "MLflow run" in text


@pytest.fixture(scope="module")
def mlflow_ui(api_run, tmp_path_factory):
    """`mlflow ui` on the API run's store, on a free loopback port."""
    _, root = api_run
    port, log = free_port(), tmp_path_factory.mktemp("mlflow-ui") / "mlflow.log"
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    process = subprocess.Popen(
        [mlflow, "ui", "--backend-store-uri", f"sqlite:///{root.parent / 'mlflow.db'}", "--host", "127.0.0.1",
         "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(url), "mlflow ui", process, log)
        yield url
    finally:
        stop(process)


def test_mlflow_run_link_opens_the_training_view_with_metric_charts(api_run, mlflow_ui, page, screenshots):
    """The MLflow link azr logs (here with the test's port) opens the run in the training view: a
    chart per metric, grouped by prefix, every rejection reason among them; the iteration's
    summary.csv previews as a table."""
    _, root = api_run
    link = run_link(AZRConfig(), RunDir(root)).replace("http://127.0.0.1:5000", mlflow_ui)
    page.goto(link.replace("?", "/model-metrics?"))
    page.get_by_text("tasks/rejected", exact=True).first.wait_for()
    page.screenshot(path=screenshots / "mlflow-run-metrics.png", full_page=True)
    text = page.inner_text("body")
    assert "\nRuns\nfrom-api\n" in text  # the training view's breadcrumb: experiment, Runs, the run
    assert "Evaluations" not in text and "Judges" not in text  # not the GenAI view's
    sections = {"tasks/rejected": len(REJECTION_REASONS), "reward/propose": len(REWARD_COMPONENTS),
                "reward/solve": len(REWARD_COMPONENTS), "proposals": 5, "solve_rate": 4}
    for section, charts in sections.items():
        assert f"\n{section}\n({charts})\n" in text, section

    page.goto(link.replace("?", "/artifacts?"))
    page.get_by_text("iter-0001", exact=True).first.click()
    page.get_by_text("summary.csv", exact=True).first.click()
    page.get_by_text("Previewing the first", exact=False).first.wait_for()
    page.screenshot(path=screenshots / "mlflow-summary-artifact.png", full_page=True)
    text = page.inner_text("body")
    for row in ("iteration\t1", "prop\t4", "solved\t"):
        assert row in text, row
