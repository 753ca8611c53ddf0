"""Backend `docker`: a pool of warm containers, each running the runner as a fork server.

Containers have no network, a read-only root, a small tmpfs /tmp, memory/pids/CPU limits, no
capabilities, no-new-privileges and a non-root user. The host talks to each runner over the
container's attached stdin/stdout (Docker's multiplexed stream, decoded here).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time
from typing import Any

from azr.config import ExecutorConfig
from azr.sandbox.client import RUNNER_PATH, START_SECONDS, SandboxError, read_hello

SANDBOX_UID = 10001  # the USER of containers/executor/Dockerfile
RUNNER_LABEL = "azr.runner.sha256"
TMPFS_MB = 64
PIDS_PER_SLOT = 16


def runner_digest() -> str:
    """Fingerprint of the runner baked into an image: a mismatch means the image is stale."""
    return hashlib.sha256(RUNNER_PATH.read_bytes()).hexdigest()


def docker_client(timeout: float = 10.0) -> Any:
    """A Docker SDK client that has answered a ping, or SandboxError saying why not."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # the SDK raises many types for "no daemon"
        raise SandboxError(f"the Docker daemon does not answer: {exc}") from None


def image_problem(client: Any, image: str) -> str | None:
    """None when the image exists and carries this runner; else what is wrong."""
    import docker.errors

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

    def __init__(self, client: Any, config: ExecutorConfig, number: int):
        self.client = client
        self.name = f"container worker {number}"
        self.decoder = StreamDecoder()
        host_config = client.api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"size={TMPFS_MB}m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=1777"},
            mem_limit=f"{config.container_memory_mb}m",
            memswap_limit=f"{config.container_memory_mb}m",
            pids_limit=config.worker_slots * PIDS_PER_SLOT + 8,
            nano_cpus=int(config.container_cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            auto_remove=True,
        )
        self.container = client.api.create_container(
            config.image,
            detach=False,
            stdin_open=True,
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            working_dir="/tmp",
            environment={"PYTHONHASHSEED": "0"},
            host_config=host_config,
            labels={"azr.sandbox": "executor"},
        )["Id"]
        # Attach before start, so no output is lost and the HTTP layer has buffered nothing after its headers.
        stream = client.api.attach_socket(self.container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        self.socket: socket.socket = getattr(stream, "_sock", stream)
        self._stream = stream
        self.read_fd = self.socket.fileno()
        self.write_fd = os.dup(self.read_fd)
        client.api.start(self.container)

    def start(self, runner_config: dict[str, Any]) -> dict[str, Any]:
        self.socket.sendall(json.dumps({"config": {**runner_config, "parent_death_signal": False}}).encode() + b"\n")
        return read_hello(self, time.monotonic() + START_SECONDS)

    def decode(self, data: bytes) -> bytes:
        return self.decoder.feed(data)

    def describe_death(self) -> str:
        tail = self.decoder.stderr.decode(errors="replace").strip()
        try:
            state = self.client.api.inspect_container(self.container)["State"]
            status = f"container {state.get('Status')}, exit code {state.get('ExitCode')}, OOM killed {state.get('OOMKilled')}"
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
        try:
            os.close(self.write_fd)
        except OSError:
            pass
        self.socket.close()
        self._stream.close()


def make_docker_workers(config: ExecutorConfig) -> Any:
    """A worker factory for `Sandbox`, after checking the daemon and the image."""
    client = docker_client()
    problem = image_problem(client, config.image)
    if problem:
        raise SandboxError(problem)

    def make(number: int) -> DockerWorker:
        try:
            return DockerWorker(client, config, number)
        except SandboxError:
            raise
        except Exception as exc:
            raise SandboxError(f"cannot start a sandbox container from {config.image}: {exc}") from exc

    return make
