"""Backend `dask`: each batch split into chunks that Dask workers run, each on a warm sandbox of its own.

A worker plugin (`SandboxPlugin`), registered from the run's executor config, opens a local
`docker` or `process` pool (`executor.dask_worker_backend`) on every worker that offers the
`sandbox` resource: those there when the pool opens and any that join later (a restarted one too).
`DaskSandbox.run` sends one Dask task per chunk with ``resources={"sandbox": 1}``, so a worker runs
one chunk at a time (a pool runs one batch at a time), and returns the answers in job order. A
worker that dies mid-batch is the scheduler's to handle: it reruns that worker's chunks on the
others, and each chunk's answers are those of the one run whose result it keeps, so no answer is
lost or counted twice. The host-side checks (`azr.sandbox.checks`) run in the client as for any
`Sandbox`; only `run` differs.

Dask runs whatever pickle a client sends, so its scheduler must be reachable only by trusted
clients: TLS with certificates, or a private network (design.md section 8).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from typing import Any

from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, get_worker, wait

from azr.config import ExecutorConfig
from azr.sandbox.client import START_SECONDS, Sandbox, SandboxError

log = logging.getLogger(__name__)

RESOURCE = "sandbox"  # what a worker offers (`dask worker --resources sandbox=1`) to be given chunks
POLL_SECONDS = 1.0  # how often a waiting batch checks that some worker can still run it


class SandboxPlugin(WorkerPlugin):
    """On each Dask worker with the `sandbox` resource: one warm local pool, one chunk at a time.

    The pool closes after `executor.dask_idle_close_seconds` without a chunk and opens again for the
    next one: a client that dies without closing its sandbox, and so never unregisters this plugin,
    leaves no containers running on the workers for longer than that.
    """

    def __init__(self, config: ExecutorConfig):
        self.config = config  # backend is the worker's own: auto, docker or process
        self.sandbox: Sandbox | None = None
        self.error: str | None = None
        self.torn_down = False

    async def setup(self, worker: Any) -> None:
        from azr.sandbox import open_sandbox

        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        if RESOURCE not in worker.state.total_resources:
            return  # given no chunks: no pool
        try:  # containers take seconds to start: off the worker's event loop, which keeps its heartbeats
            self.sandbox = await asyncio.to_thread(open_sandbox, self.config)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise
        self.closer = asyncio.get_running_loop().create_task(self._close_when_idle())

    async def _close_when_idle(self) -> None:
        limit = self.config.dask_idle_close_seconds
        while True:
            await asyncio.sleep(min(limit / 2, 30.0))
            if self.sandbox is None or time.monotonic() - self.last_used < limit or not self.lock.acquire(blocking=False):
                continue
            sandbox, self.sandbox = self.sandbox, None
            self.lock.release()
            log.info("closing the idle sandbox pool (unused for %.0f s)", limit)
            await asyncio.to_thread(sandbox.close)

    def teardown(self, worker: Any) -> None:
        self.torn_down = True
        if getattr(self, "closer", None) is not None:
            self.closer.cancel()
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from azr.sandbox import open_sandbox

        with self.lock:
            if self.error or self.torn_down:
                raise SandboxError(f"the sandbox did not open on this Dask worker: {self.error or 'closed'}")
            if self.sandbox is None:  # closed while idle
                self.sandbox = open_sandbox(self.config)
            try:
                return self.sandbox.run(jobs)
            finally:
                self.last_used = time.monotonic()


def run_chunk(plugin_name: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Dask task: a chunk of runner jobs through this worker's pool."""
    worker = get_worker()
    plugin = worker.plugins.get(plugin_name)
    if plugin is None:
        raise SandboxError(f"Dask worker {worker.address} has no sandbox {plugin_name} (closed, or set up elsewhere)")
    return plugin.run(jobs)


def describe_worker(plugin_name: str, dask_worker: Any) -> dict[str, Any]:
    """Which backend this worker's pool runs and its runner's hello (`Client.run` passes dask_worker)."""
    sandbox = dask_worker.plugins[plugin_name].sandbox
    return {"backend": sandbox.backend, "hello": sandbox.hello} if sandbox else {"backend": None, "hello": None}


class DaskSandbox(Sandbox):
    """The `Sandbox` operations with `run` spread over a Dask cluster. Use `open_sandbox`.

    Subclasses `Sandbox` for its operations (validate, check_*), which need only `run` and
    `config`; it starts no pool of its own, so `Sandbox.__init__` is not called.
    """

    def __init__(self, config: ExecutorConfig):  # not super().__init__(), which would start a local pool
        self.config = config
        self.backend = "dask"
        self.replaced = 0  # dead local workers are replaced on the Dask workers, not counted here
        self._cluster: LocalCluster | None = None
        self._client: Client | None = None
        self._plugin = f"azr-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            self._client = self._connect()
            self._sandbox_workers(wait=True)
            worker_config = config.model_copy(update={"backend": config.dask_worker_backend})
            self._client.register_plugin(SandboxPlugin(worker_config), name=self._plugin)
            self.workers: dict[str, dict[str, Any]] = self._client.run(
                describe_worker, self._plugin, workers=self._sandbox_workers()
            )
        except BaseException:
            self.close()
            raise
        backends = sorted({str(w["backend"]) for w in self.workers.values()})
        log.info("sandbox backend: dask (%s, %d workers running %s)", self.address, len(self.workers), "/".join(backends))

    @property
    def address(self) -> str:
        return self._client.scheduler.address if self._client else "closed"

    @property
    def hello(self) -> dict[str, Any]:
        """What the first Dask worker's runner reported (python version, network isolation)."""
        return next(w["hello"] for w in self.workers.values() if w["hello"])

    def _connect(self) -> Client:
        if self.config.dask_address is not None:
            return Client(self.config.dask_address, timeout=START_SECONDS)
        # Loopback only, and TLS with credentials made for this cluster: Dask runs any pickle a
        # client sends, so not even another user of this machine may connect.
        self._cluster = LocalCluster(
            n_workers=self.config.dask_local_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            resources={RESOURCE: 1}, dashboard_address=None, security=True, silence_logs=logging.WARNING,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # its HTTP server (health, metrics) on a free port
        )
        return Client(self._cluster)

    def _sandbox_workers(self, wait: bool = False) -> list[str]:
        """Addresses of the workers that offer the sandbox resource; with wait, SandboxError if none comes."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            workers = self._client.scheduler_info(n_workers=-1)["workers"]
            found = [address for address, info in workers.items() if info.get("resources", {}).get(RESOURCE)]
            if found or not wait:
                return found
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"no Dask worker at {self.address} offers the '{RESOURCE}' resource within {START_SECONDS:.0f} s "
                    f"({len(workers)} workers; start them with `dask worker ADDRESS --resources {RESOURCE}=1`)"
                )
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        """Unregister the plugin (each worker closes its pool), then stop a LocalCluster azr started."""
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        try:
            if client is not None:
                try:
                    client.unregister_worker_plugin(self._plugin)
                except Exception as exc:  # never registered, or the scheduler is gone: nothing left to close
                    log.debug("unregistering %s: %s", self._plugin, exc)
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run runner jobs in chunks across the Dask workers; one answer dict per job, in order."""
        if self._client is None:
            raise SandboxError("sandbox is closed")
        if not jobs:
            return []
        workers = max(1, len(self._sandbox_workers()))
        # As many chunks for each worker, of equal size: no worker is left with a long last one alone.
        count = workers * math.ceil(len(jobs) / (self.config.dask_chunk_size * workers))
        size = math.ceil(len(jobs) / count)
        futures = [
            self._client.submit(run_chunk, self._plugin, jobs[start : start + size], resources={RESOURCE: 1}, pure=False)
            for start in range(0, len(jobs), size)
        ]
        try:
            self._wait(futures)
            chunks = self._client.gather(futures)
        except KilledWorker as exc:
            raise SandboxError(f"a chunk of up to {size} jobs was on more Dask workers that died than Dask allows: {exc}") from exc
        finally:
            self._client.cancel(futures)
        return [answer for chunk in chunks for answer in chunk]

    def _wait(self, futures: list[Any]) -> None:
        """Until every chunk is done; SandboxError when no worker could run one for START_SECONDS."""
        alone_since: float | None = None
        while True:
            try:
                wait(futures, timeout=POLL_SECONDS)
                return
            except TimeoutError:
                pass
            if self._sandbox_workers():
                alone_since = None
            elif alone_since is None:
                alone_since = time.monotonic()
            elif time.monotonic() - alone_since > START_SECONDS:
                raise SandboxError(f"no Dask worker at {self.address} with the '{RESOURCE}' resource for {START_SECONDS:.0f} s")
