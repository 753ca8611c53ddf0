"""`azr serve`: the training flow as a Prefect deployment, with the whole config as its parameter.

The parameter is `AZRConfig` itself, so the Prefect UI's "Run" form is built from the config's
titles, descriptions and bounds, and the server refuses a run whose config breaks them (naming the
field). A run may pass only part of a config: the flow merges it over the served one
(`flows.training.resolve_config`). This process then executes the runs the UI or the API creates.
Import after `flows.prefect_env.prepare_environment`.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from azr.config import AZRConfig
from flows.training import training_run

DEPLOYMENT_NAME = "azr"
# Long lists the form shows as one comma-separated line instead of a row per entry (the config
# takes either form: azr.config.NameList).
FORM_TEXT_LISTS = (("executor", "banned_modules"),)


def form_parameters(config: AZRConfig) -> dict[str, Any]:
    """The deployment's parameters: ``config`` as the form shows it."""
    data = config.model_dump(mode="json")
    for section, key in FORM_TEXT_LISTS:
        data[section][key] = ", ".join(data[section][key])
    return {"config": data}


def build_deployment(config: AZRConfig, name: str = DEPLOYMENT_NAME) -> RunnerDeployment:
    """The deployment of `training_run` whose default parameters are ``config``."""
    return training_run.to_deployment(
        name=name,
        parameters=form_parameters(config),
        description="AZR self-play training run. Edit the config below, then press Run.",
        tags=["azr"],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,  # found by import, whatever the working directory
    )


def serve_deployment(config: AZRConfig, name: str = DEPLOYMENT_NAME, limit: int = 1) -> None:
    """Register the deployment and execute its runs (``limit`` at a time) until interrupted."""
    serve(build_deployment(config, name), limit=limit)
