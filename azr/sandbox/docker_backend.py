"""Backend `docker`: a pool of warm containers, each running the runner as a fork server.

Containers have no network, a read-only root, a small tmpfs /tmp, memory/pids/CPU limits, no
capabilities, no-new-privileges and a non-root user. The host talks to each runner over one of two
transports (`executor.docker_transport`):

- `socket`: the runner connects to a Unix socket the host listens on, in a directory mounted
  read-only into the container. Jobs and answers then go straight between the two processes;
  the host accepts one connection and removes the socket, so nothing else can connect.
- `attach`: the container's attached stdin/stdout, relayed by the daemon (Docker's multiplexed
  stream, decoded here). Works with any daemon, remote ones included, but dockerd and
  containerd-shim copy every byte: about an eighth of the sandbox's CPU time at full load.

`auto` takes `socket` when the daemon runs on this Linux machine (a Unix socket cannot cross into
a remote daemon or Docker Desktop's VM), else `attach`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from azr.config import ExecutorConfig
from azr.reaper import owner_labels
from azr.sandbox import client as pool_module
from azr.sandbox.client import RUNNER_ENV, RUNNER_PATH, START_SECONDS, SandboxError, read_hello, sandbox_uid

log = logging.getLogger(__name__)

SANDBOX_UID = 10001  # the USER of containers/executor/Dockerfile; the pool runs each container as its own uid
RUNNER_LABEL = "azr.runner.sha256"
TMPFS_MB = 64
PIDS_PER_SLOT = 16
SOCKET_MOUNT = "/run/azr"  # where the host's socket directory appears inside the container
ACCEPT_POLL_SECONDS = 1.0  # while waiting for a starting runner, how often to check its container still runs


def runner_digest() -> str:
    """Fingerprint of the runner baked into an image: a mismatch means the image is stale."""
    return hashlib.sha256(RUNNER_PATH.read_bytes()).hexdigest()


def image_ref(image: str) -> str:
    """`image` as given when it names a tag, else `image:<first 12 hex digits of the runner digest>`.

    Two checkouts with different runners (two azr versions, or branches) can then share one daemon:
    each builds and finds its own image instead of calling the other's stale.
    """
    name = image.rsplit("/", 1)[-1]
    return image if ":" in name or "@" in name else f"{image}:{runner_digest()[:12]}"


def docker_client(timeout: float = 10.0) -> Any:
    """A Docker SDK client that has answered a ping, or SandboxError saying why not."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises many types for "no daemon"
        raise SandboxError(f"the Docker daemon does not answer: {exc}") from None


def await_daemon(timeout: float, wait: float) -> Any:
    """`docker_client(timeout)`, trying again for ``wait`` seconds while the daemon does not answer (a restart)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return docker_client(timeout)
        except SandboxError as exc:
            if time.monotonic() >= deadline:
                raise SandboxError(f"{exc} (waited {wait:.0f} s). Start it (containers/setup-docker.sh starts one), "
                                   "then continue the run (azr resume)") from None
            log.warning("%s; waiting up to %.0f s for it", exc, deadline - time.monotonic())
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def image_problem(client: Any, image: str) -> str | None:
    """None when the image exists and carries this runner; else what is wrong."""
    import docker.errors

    image = image_ref(image)
    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        return f"image {image} does not exist (run `azr sandbox build --offline`)"
    if labels.get(RUNNER_LABEL) != runner_digest():
        return f"image {image} holds another version of the runner (run `azr sandbox build` again)"
    return None


class StreamDecoder:
    """Docker's attach stream: 8-byte frame headers (stream, size) before each chunk."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.stderr = bytearray()

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 8:
            stream, size = struct.unpack(">BxxxL", self.buffer[:8])
            if len(self.buffer) < 8 + size:
                break
            chunk = self.buffer[8 : 8 + size]
            del self.buffer[: 8 + size]
            if stream == 1:
                out += chunk
            else:
                self.stderr = (self.stderr + chunk)[-4000:]
        return bytes(out)


class DockerWorker:
    """One sandbox container; the runner is its PID 1, so a program cannot signal it."""

    def __init__(self, client: Any, config: ExecutorConfig, number: int, transport: str):
        self.client = client
        self.name = f"container worker {number}"
        self.decoder = StreamDecoder() if transport == "attach" else None
        self._socket_dir = Path(tempfile.mkdtemp(prefix="azr-sandbox-")) if transport == "socket" else None
        self._listener = self._listen() if self._socket_dir else None
        self._stream = None
        # Named before it exists: a busy daemon may create it after the request timed out here, and
        # a container that never started is not auto-removed, so a failed start removes it by name.
        self.container = f"azr-sandbox-{secrets.token_hex(8)}"
        try:
            self._create_and_start(config)
        except BaseException:
            self.kill()
            try:
                client.api.remove_container(self.container, force=True)
            except Exception:  # never created, or removed already
                pass
            raise

    def _create_and_start(self, config: ExecutorConfig) -> None:
        client = self.client
        uid = sandbox_uid()
        host_config = client.api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"size={TMPFS_MB}m,uid={uid},gid={uid},mode=1777"},
            binds={str(self._socket_dir): {"bind": SOCKET_MOUNT, "mode": "ro"}} if self._socket_dir else None,
            mem_limit=f"{config.container_memory_mb}m",
            memswap_limit=f"{config.container_memory_mb}m",
            pids_limit=config.worker_slots * PIDS_PER_SLOT + 8,
            nano_cpus=int(config.container_cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            auto_remove=True,
        )
        self.container = client.api.create_container(
            image_ref(config.image),
            command=["--connect", f"{SOCKET_MOUNT}/runner.sock"] if self._socket_dir else None,
            detach=False,
            stdin_open=self.decoder is not None,
            user=f"{uid}:{uid}",
            working_dir="/tmp",
            environment={"PYTHONHASHSEED": "0", **RUNNER_ENV},
            host_config=host_config,
            labels={"azr.sandbox": "executor", **owner_labels()},  # the owner: removed if azr is killed
            # The runner (PID 1) has no use for SIGTERM, which PID 1 ignores anyway: without this, a
            # daemon shutting down (a restart) would wait out its stop timeout for every container.
            stop_signal="SIGKILL",
            name=self.container,
        )["Id"]
        if self.decoder is not None:
            # Attach before start, so no output is lost and the HTTP layer has buffered nothing after its headers.
            self._stream = client.api.attach_socket(self.container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
            self._use(getattr(self._stream, "_sock", self._stream))
        client.api.start(self.container)

    def _listen(self) -> socket.socket:
        path = self._socket_dir / "runner.sock"
        self._socket_dir.chmod(0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        path.chmod(0o666)  # the container's user is not ours
        listener.listen(1)
        return listener

    def _use(self, connection: socket.socket) -> None:
        self.socket = connection
        self.read_fd = connection.fileno()
        self.write_fd = os.dup(self.read_fd)

    def _accept(self, deadline: float) -> None:
        """Take the runner's connection, then remove the socket so that nothing else can connect.

        Fails as soon as the container has stopped (one started while a Docker daemon restarts may be
        removed at once), so that the caller can start another instead of waiting out the deadline."""
        try:
            while True:
                self._listener.settimeout(max(0.1, min(ACCEPT_POLL_SECONDS, deadline - time.monotonic())))
                try:
                    connection, _ = self._listener.accept()
                    break
                except socket.timeout:
                    if time.monotonic() >= deadline:
                        raise SandboxError(f"{self.name}: the runner did not connect within {START_SECONDS:.0f} s: "
                                           f"{self.describe_death()}") from None
                    if not self._running():
                        raise SandboxError(f"{self.name}: the container stopped before its runner connected: "
                                           f"{self.describe_death()}") from None
        finally:
            self._listener.close()
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        connection.setblocking(True)
        self._use(connection)

    def start(self, runner_config: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + START_SECONDS
        if self._listener is not None:
            self._accept(deadline)
        self.socket.sendall(json.dumps({"config": {**runner_config, "parent_death_signal": False}}).encode() + b"\n")
        return read_hello(self, deadline)

    def decode(self, data: bytes) -> bytes:
        return self.decoder.feed(data) if self.decoder is not None else data

    def _running(self) -> bool:
        """Whether the container is created or running (False once it exited or was removed)."""
        try:
            return self.client.api.inspect_container(self.container)["State"]["Status"] in ("created", "running")
        except Exception:  # removed (auto_remove), or the daemon does not answer
            return False

    def describe_death(self) -> str:
        tail = self.decoder.stderr.decode(errors="replace").strip() if self.decoder is not None else ""
        try:
            state = self.client.api.inspect_container(self.container)["State"]
            status = f"container {state.get('Status')}, exit code {state.get('ExitCode')}, OOM killed {state.get('OOMKilled')}"
            if not tail:
                tail = self.client.api.logs(self.container, stdout=False, stderr=True, tail=20).decode(errors="replace").strip()
        except Exception:  # auto-removed already
            status = "container gone"
        return status + (f"; stderr: {tail}" if tail else "")

    def kill(self) -> None:
        for attempt in ("kill", "unpause"):
            try:
                self.client.api.kill(self.container)
                break
            except Exception:  # already exited and auto-removed, or paused (a paused container cannot be killed)
                if attempt == "kill":
                    try:
                        self.client.api.unpause(self.container)
                    except Exception:
                        break
        if hasattr(self, "write_fd"):
            try:
                os.close(self.write_fd)
            except OSError:
                pass
            self.socket.close()
        for closable in (self._stream, self._listener):
            if closable is not None:
                closable.close()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)


def choose_transport(client: Any, configured: str) -> str:
    """`socket` or `attach` for `executor.docker_transport`; see the module docstring."""
    if configured != "auto":
        return configured
    local = sys.platform.startswith("linux") and client.api.base_url.startswith("http+docker://")
    return "socket" if local else "attach"


def make_docker_workers(config: ExecutorConfig) -> Any:
    """A worker factory for `Sandbox`, after checking the daemon and the image."""
    # A busy daemon (vfs copies each container's root) takes its time; a restarting one comes back.
    client = await_daemon(timeout=START_SECONDS, wait=pool_module.RESTART_SECONDS)
    problem = image_problem(client, config.image)
    if problem:
        raise SandboxError(problem)
    transport = choose_transport(client, config.docker_transport)

    def make(number: int) -> DockerWorker:
        try:
            return DockerWorker(client, config, number, transport)
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(f"cannot start a sandbox container from {image_ref(config.image)}: {exc}") from exc

    return make
