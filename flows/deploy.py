"""`azr serve`: the training flow as a Prefect deployment, with the whole config as its parameter.

The parameter is `AZRConfig` itself, so the Prefect UI's "Run" form is built from the config's
descriptions and bounds, and the server refuses a run whose config breaks them (naming the
field). This process then executes the runs the UI or the API creates. Import after
`flows.prefect_env.prepare_environment`.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import EntrypointType, RunnerDeployment

from azr.config import AZRConfig
from flows.training import training_run

DEPLOYMENT_NAME = "azr"


def build_deployment(config: AZRConfig, name: str = DEPLOYMENT_NAME) -> RunnerDeployment:
    """The deployment of `training_run` whose default parameters are ``config``."""
    return training_run.to_deployment(
        name=name,
        parameters={"config": config.model_dump(mode="json")},
        description="AZR self-play training run. Edit the config below, then press Run.",
        tags=["azr"],
        enforce_parameter_schema=True,
        entrypoint_type=EntrypointType.MODULE_PATH,  # found by import, whatever the working directory
    )


def serve_deployment(config: AZRConfig, name: str = DEPLOYMENT_NAME, limit: int = 1) -> None:
    """Register the deployment and execute its runs (``limit`` at a time) until interrupted."""
    serve(build_deployment(config, name), limit=limit)
