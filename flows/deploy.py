"""`azr serve` and `azr deploy`: the training flow as a Prefect deployment, the whole config its parameter.

The parameter is `AZRConfig` itself, so the Prefect UI's "Run" form is built from the config's
titles, descriptions and bounds, and the server refuses a run whose config breaks them (naming the
field). A run may pass only part of a config: the flow merges it over the served one
(`flows.training.resolve_config`). `azr serve` executes the runs the UI or the API creates in its own
process; `azr deploy --pool NAME` registers the deployment with a work pool instead, and a worker
(`prefect worker start --pool NAME`) on another machine picks the runs up. The deployment's entrypoint
is the module path `flows.training.training_run`, so a worker needs azr installed (the same version),
the runs directory at the same path (shared storage) and the MLflow tracking URI reachable.
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


def deploy_to_pool(config: AZRConfig, pool: str, name: str = DEPLOYMENT_NAME) -> str:
    """Register the deployment with work pool ``pool`` (created as a process pool if missing); its id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    return str(build_deployment(config, name).apply(work_pool_name=pool))


def serve_deployment(config: AZRConfig, name: str = DEPLOYMENT_NAME, limit: int = 1) -> None:
    """Register the deployment and execute its runs (``limit`` at a time) until interrupted."""
    serve(build_deployment(config, name), limit=limit)
