"""The execution sandbox: every model-written program runs here, never in the host process.

    with open_sandbox(config.executor) as sandbox:
        results = sandbox.validate([(program, ["[1, 2], 'a'"])])

See design.md section 8 and `azr.sandbox.client.Sandbox` for the operations.
"""

from __future__ import annotations

import logging

from azr.config import ExecutorConfig
from azr.sandbox.client import CheckResult, Sandbox, SandboxError, ValidationResult
from azr.sandbox.safety import check_program

__all__ = ["open_sandbox", "Sandbox", "SandboxError", "ValidationResult", "CheckResult", "check_program", "choose_backend"]

log = logging.getLogger(__name__)


def choose_backend(config: ExecutorConfig) -> tuple[str, str]:
    """(backend, why) for config.backend; `auto` is docker when the daemon answers and the image is current."""
    if config.backend != "auto":
        return config.backend, "configured"
    from azr.sandbox.docker_backend import docker_client, image_problem, image_ref

    try:
        problem = image_problem(docker_client(timeout=3.0), config.image)
    except SandboxError as exc:
        problem = str(exc)
    return ("process", problem) if problem else ("docker", f"daemon answers and image {image_ref(config.image)} is current")


def open_sandbox(config: ExecutorConfig) -> Sandbox:
    """Start a warm pool for config.backend (auto | docker | process | dask) and log which backend runs."""
    backend, why = choose_backend(config)
    if backend == "dask":  # a pool on each Dask worker; it logs what they run
        from azr.sandbox.dask_backend import DaskSandbox

        return DaskSandbox(config)
    if backend == "docker":
        from azr.sandbox.docker_backend import make_docker_workers

        make_worker, extra = make_docker_workers(config), {}
    else:
        from azr.sandbox.process_backend import make_process_worker

        make_worker, extra = make_process_worker, {}
    log.info("sandbox backend: %s (%s)", backend, why)
    return Sandbox(config, backend, make_worker, extra)
