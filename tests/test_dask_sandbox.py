"""Backend `dask` against a real cluster: a TLS scheduler and two workers started with the documented
`dask scheduler` / `dask worker` commands on loopback, compared verdict for verdict with the local
docker backend, and a worker process killed for real in the middle of a batch.

Set AZR_REQUIRE_DOCKER=1 (CI does) to fail instead of skip when the docker backend cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster
from distributed.security import Security

from azr.config import DEFAULT_BANNED_MODULES, ExecutorConfig
from azr.sandbox import SandboxError, open_sandbox
from azr.sandbox import dask_backend
from tests.test_sandbox import HOSTILE, HOSTILE_UNBANNED, LIMITS, docker_problem, open_backend

ROOT = Path(__file__).resolve().parents[1]
CRUXEVAL = ROOT.parent / "shared" / "data" / "cruxeval" / "cruxeval.jsonl"
DASK = str(Path(sys.executable).parent / "dask")


@dataclass
class Cluster:
    address: str
    client: Client  # the test's own view of the cluster (the sandbox has a client of its own)
    logs: Path


def start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        return subprocess.Popen([DASK, *args], env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker ... --resources sandbox=1`, over TLS with a certificate of the test's."""
    tmp = tmp_path_factory.mktemp("dask")
    credentials = Security.temporary()  # one self-signed certificate, its own CA, for every role
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    cert.write_text(credentials.tls_ca_file)
    key.write_text(credentials.tls_client_key)
    key.chmod(0o600)
    tls = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    scheduler_file = tmp / "scheduler.json"
    processes = [start(["scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(scheduler_file), *tls], tmp / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline and processes[0].poll() is None:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for name in ("w1", "w2"):
            processes.append(start(["worker", address, "--name", name, "--nthreads", "1", "--resources", "sandbox=1",
                                    "--host", "127.0.0.1", "--no-dashboard", *tls], tmp / f"worker-{name}.log"))
        client_tls = {"distributed.comm.tls.ca-file": str(cert), "distributed.comm.tls.client.cert": str(cert),
                      "distributed.comm.tls.client.key": str(key), "distributed.comm.require-encryption": True}
        with dask.config.set(client_tls):  # what a user puts in ~/.config/dask/ (README, Running on a cluster)
            with Client(address, timeout=30) as client:
                client.wait_for_workers(2, timeout=120)
                yield Cluster(address, client, tmp)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def dask_config(cluster: Cluster, **overrides) -> ExecutorConfig:
    return ExecutorConfig(backend="dask", dask_address=cluster.address, **{**LIMITS, **overrides})


@pytest.fixture(scope="module")
def docker_backend():
    """The worker backend the verdicts are compared with; skipped (or failed) like the docker tests."""
    with open_backend("docker", pool_size=1):
        pass
    return "docker"


@pytest.fixture(scope="module")
def pair(cluster, docker_backend):
    """The dask backend (docker pools on two workers) and the local docker backend, same limits."""
    with open_sandbox(dask_config(cluster, dask_worker_backend="docker")) as remote, open_backend("docker") as local:
        yield remote, local


def verdicts(results) -> list[dict]:
    """Every field of each result but its time (and the random values a nondeterministic error quotes)."""
    return [{**asdict(r), "seconds": None, **({"error": None} if r.status == "nondeterministic" else {})} for r in results]


# ------------------------------------------------------------------ the same verdicts as local docker


def test_both_workers_hold_a_docker_pool_and_the_scheduler_speaks_tls_only(cluster, pair):
    remote, _ = pair
    assert len(remote.workers) == 2 and {w["backend"] for w in remote.workers.values()} == {"docker"}
    assert remote.address.startswith("tls://127.0.0.1:")
    with dask.config.set({"distributed.comm.require-encryption": False}):
        with pytest.raises((OSError, TimeoutError)):  # no TLS, no connection: nobody else can send it a pickle
            Client(cluster.address.replace("tls://", "tcp://"), timeout=5)


@pytest.mark.skipif(not CRUXEVAL.is_file(), reason=f"CRUXEval data not found at {CRUXEVAL}")
def test_cruxeval_800_programs_same_verdicts_in_the_same_order(pair):
    rows = [json.loads(line) for line in CRUXEVAL.read_text().splitlines() if line.strip()]
    items = [(row["code"], [row["input"]]) for row in rows]
    remote, local = pair
    ours = remote.validate(items)
    assert verdicts(ours) == verdicts(local.validate(items))
    assert [r.outputs for r in ours] == [[row["output"]] for row in rows]


def test_hostile_programs_same_verdicts_in_the_same_order(cluster, docker_backend):
    """One program per container at a time (worker_slots=1): a CPU hog sharing a container's CPU quota
    would slow its neighbour past the wall-clock limit, and which programs share a container is the
    packing's choice, not the program's (it differs between two local pools of different sizes too)."""
    remote = open_sandbox(dask_config(cluster, dask_worker_backend="docker", worker_slots=1))
    with remote, open_backend("docker", worker_slots=1) as local:
        assert_same_hostile_verdicts(remote, local)


def assert_same_hostile_verdicts(remote, local) -> None:
    hostile = [(program, ["1"]) for program, _ in HOSTILE.values()]
    unbanned = [(program, ["1"]) for program, _ in HOSTILE_UNBANNED.values()]
    for items, banned in ((hostile, None), (unbanned, []), (unbanned, DEFAULT_BANNED_MODULES)):
        assert verdicts(remote.validate(items, banned_modules=banned)) == verdicts(local.validate(items, banned_modules=banned))


def test_answer_checks_same_verdicts(pair):
    remote, local = pair
    program = "def f(a, b):\n    return a * b"
    deduction = [("[1, 2]", "[1,2]"), ("(1, 'a')", "(1, 'b')"), ("3", "1 +"), ("1", "__import__('os')"),
                 ("1", "sum(1 for _ in iter(int, 1))")]
    abduction = [(program, "f(2, 3)", "6"), (program, "1, 1", "6"), (program, "f(", "6")]
    induction = [("def g(x):\n    return x * 2", ["1", "2"], ["2", "4"]), ("def f(x):\n    return x + 1", ["1", "2"], ["2", "4"])]
    for check, items in (("check_deduction", deduction), ("check_abduction", abduction), ("check_induction", induction)):
        ours = getattr(remote, check)(items)
        assert verdicts(ours) == verdicts(getattr(local, check)(items)), check
        assert any(r.correct for r in ours) and not all(r.correct for r in ours), check


def test_answers_come_back_in_job_order_when_later_chunks_finish_first(cluster):
    """The first chunk sleeps; the chunks after it, on the other worker, are done long before it is."""
    slow = [(f"import time\ndef f(x):\n    time.sleep(0.6)\n    return {i}", ["0"]) for i in range(4)]
    quick = [(f"def f(x):\n    return {i}", ["0"]) for i in range(4, 40)]
    with open_sandbox(dask_config(cluster, dask_worker_backend="process", pool_size=1, dask_chunk_size=4)) as box:
        results = box.validate(slow + quick, banned_modules=[])
    assert [r.outputs for r in results] == [[str(i)] for i in range(40)]


# ------------------------------------------------------------------ a worker killed mid-batch


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(cluster, docker_backend):
    """Each program sleeps, so chunks are in flight for seconds; one worker process gets SIGKILL while
    it runs a chunk. The scheduler reruns its chunks on the other worker (the nanny restarts it meanwhile)."""
    items = [(f"import time\ndef f(x):\n    time.sleep(0.25)\n    return x * 1000 + {i}", [str(i)]) for i in range(48)]
    killed = {}

    with open_sandbox(dask_config(cluster, dask_worker_backend="docker", pool_size=1, dask_chunk_size=6)) as box:
        victim = sorted(box.workers)[0]
        pid = cluster.client.run(os.getpid, workers=[victim])[victim]
        containers = cluster.client.run(pool_containers, box._plugin, workers=[victim])[victim]

        def kill_while_it_runs_a_chunk() -> None:
            deadline = time.monotonic() + 60
            while not cluster.client.processing([victim]).get(victim) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # inside the chunk: its first programs are sleeping in the pool
            killed["running"] = list(cluster.client.processing([victim]).get(victim, []))
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_while_it_runs_a_chunk)
        killer.start()
        results = box.validate(items, banned_modules=[])
        killer.join()
        assert killed["running"], "the worker was killed with no chunk in flight"
        assert [(r.status, r.outputs) for r in results] == [("ok", [str(i * 1000 + i)]) for i in range(48)]
        assert not Path(f"/proc/{pid}").exists()
        assert_containers_gone(containers)
        # The nanny's new worker gets the plugin, and a pool, like any worker that joins.
        cluster.client.wait_for_workers(2, timeout=120)
        assert box.validate([("def f(x):\n    return -x", [str(i)]) for i in range(8)])[7].outputs == ["-7"]


def test_a_chunk_whose_workers_keep_dying_is_a_clear_error():
    """With Dask's allowed-failures at 0 (the LocalCluster's scheduler runs in this process, so this
    config reaches it), one worker killed under a chunk is one too many: a SandboxError, not a hang."""
    items = [("import time\ndef f(x):\n    time.sleep(0.5)\n    return x", ["1"])] * 16
    config = ExecutorConfig(backend="dask", dask_worker_backend="process", dask_local_workers=1, **{**LIMITS, "pool_size": 1})
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), open_sandbox(config) as box:
        (victim, pid), = box._client.run(os.getpid).items()

        def kill_while_it_runs_a_chunk() -> None:
            deadline = time.monotonic() + 60
            while not box._client.processing([victim]).get(victim) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_while_it_runs_a_chunk)
        killer.start()
        with pytest.raises(SandboxError, match="more Dask workers that died than Dask allows"):
            box.validate(items, banned_modules=[])
        killer.join()


def pool_containers(plugin_name: str, dask_worker) -> list[str]:
    return [slot.worker.container for slot in dask_worker.plugins[plugin_name].sandbox._slots]


def assert_containers_gone(containers: list[str]) -> None:
    """A killed worker's containers end with its socket (and remove themselves): nothing is left running."""
    from azr.sandbox.docker_backend import docker_client

    client = docker_client()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [c for c in containers if any(r["Id"] == c for r in client.api.containers(filters={"id": c}))]
        if not alive:
            return
        time.sleep(0.5)
    pytest.fail(f"containers of the killed worker still running: {alive}")


def test_an_idle_pool_closes_and_opens_again_for_the_next_chunk(cluster):
    """A client that dies without closing never unregisters its plugin: the pools close themselves."""
    config = dask_config(cluster, dask_worker_backend="process", pool_size=1, dask_idle_close_seconds=1.0)
    with open_sandbox(config) as box:
        runners = [w["hello"]["pid"] for w in box.workers.values()]
        assert all(Path(f"/proc/{pid}").exists() for pid in runners)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in runners) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in runners)  # the runners are gone, not just idle
        assert set(cluster.client.run(describe, box._plugin).values()) == {None}
        results = box.validate([(f"def f(x):\n    return x + {i}", ["1"]) for i in range(10)])
        assert [r.outputs for r in results] == [[str(1 + i)] for i in range(10)]
        assert "process" in cluster.client.run(describe, box._plugin).values()  # open again where a chunk ran


def describe(plugin_name: str, dask_worker) -> str | None:
    return dask_backend.describe_worker(plugin_name, dask_worker)["backend"]


# ------------------------------------------------------------------ setup and errors


def test_without_an_address_azr_starts_a_private_local_cluster():
    config = ExecutorConfig(backend="dask", dask_worker_backend="process", dask_local_workers=2, **{**LIMITS, "pool_size": 1})
    with open_sandbox(config) as box:
        assert box.address.startswith("tls://127.0.0.1:")  # loopback, TLS with credentials made for it
        assert len(box.workers) == 2 and {w["backend"] for w in box.workers.values()} == {"process"}
        results = box.validate([(f"def f(x):\n    return x + {i}", ["1"]) for i in range(20)])
        assert [r.outputs for r in results] == [[str(1 + i)] for i in range(20)]
        cluster = box._cluster
    assert cluster.status.name == "closed"


def test_a_worker_whose_pool_cannot_open_is_a_clear_error(cluster):
    config = dask_config(cluster, dask_worker_backend="docker", image="azr-no-such-image:never", pool_size=1)
    before = cluster.client.run(plugin_names)
    with pytest.raises(SandboxError, match="azr-no-such-image:never|Docker daemon"):
        open_sandbox(config)
    assert cluster.client.run(plugin_names) == before  # the failed plugin is unregistered from every worker


def plugin_names(dask_worker) -> list[str]:
    return sorted(dask_worker.plugins)


def test_a_cluster_without_sandbox_workers_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dask_backend, "START_SECONDS", 2.0)
    with dask.config.set({"distributed.comm.require-encryption": False}), LocalCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}
    ) as plain:
        with pytest.raises(SandboxError, match="offers the 'sandbox' resource"):
            open_sandbox(ExecutorConfig(backend="dask", dask_address=plain.scheduler_address, pool_size=1))


def test_a_batch_left_without_sandbox_workers_is_a_clear_error(monkeypatch):
    """The only worker leaves mid-batch: after START_SECONDS with no worker to run the chunks, a SandboxError."""
    monkeypatch.setattr(dask_backend, "START_SECONDS", 2.0)
    items = [("import time\ndef f(x):\n    time.sleep(0.5)\n    return x", ["1"])] * 8
    with dask.config.set({"distributed.comm.require-encryption": False}), LocalCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", resources={"sandbox": 1},
        dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as plain:
        config = ExecutorConfig(backend="dask", dask_address=plain.scheduler_address, dask_worker_backend="process", **{**LIMITS, "pool_size": 1})
        with open_sandbox(config) as box:
            leaving = threading.Timer(1.0, plain.scale, args=[0])
            leaving.start()
            with pytest.raises(SandboxError, match="no Dask worker .* resource for 2 s"):
                box.validate(items, banned_modules=[])
            leaving.join()


def test_closed_sandbox_refuses_work(cluster):
    box = open_sandbox(dask_config(cluster, dask_worker_backend="process", pool_size=1))
    box.close()
    with pytest.raises(SandboxError, match="closed"):
        box.validate([("def f(x):\n    return x", ["1"])])
