"""Nothing an azr command starts outlives it, even when the command is killed with SIGKILL.

`watch()` marks the calling process with an owner token (the ``AZR_OWNER`` environment variable,
inherited by every program it starts; the ``azr.owner`` label of its sandbox containers) and starts
a watcher in a session of its own. The watcher waits for the command to exit, however it exits,
then ends what is left: processes that carry the token (Prefect's local server, the flow-run
processes of `azr serve`), the command's children it saw while it ran (sandbox workers, started
with a minimal environment), everything below those, and the labelled containers. A process that
dies with SIGKILL runs no code, so only a process outside it can clean up after it.

    python -m azr.reaper PARENT_PID TOKEN     # what watch() starts
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import uuid

OWNER_ENV = "AZR_OWNER"
OWNER_LABEL = "azr.owner"
POLL_SECONDS = 1.0  # how often the watcher notes the command's children
GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL for what is left


def owner_labels() -> dict[str, str]:
    """Docker labels that tie a container to the azr command that started it (none outside one)."""
    token = os.environ.get(OWNER_ENV)
    return {OWNER_LABEL: token} if token else {}


def watch() -> str:
    """Mark this process's future children with a fresh owner token and start its watcher."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.environ[OWNER_ENV] = token
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}  # the watcher is not its own prey
    subprocess.Popen([sys.executable, "-m", "azr.reaper", str(os.getpid()), token], env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)  # Ctrl-C and a killed process group do not reach it
    return token


def _wait_for_exit(parent_pid: int) -> dict[int, float]:
    """Block until ``parent_pid`` exits; return its children seen meanwhile (pid -> start time)."""
    import psutil

    seen: dict[int, float] = {}
    try:
        parent, pidfd = psutil.Process(parent_pid), os.pidfd_open(parent_pid)
    except (psutil.NoSuchProcess, ProcessLookupError):
        return seen
    while not select.select([pidfd], [], [], POLL_SECONDS)[0]:  # the pidfd turns readable at exit
        try:
            seen.update((c.pid, c.create_time()) for c in parent.children())
        except psutil.Error:
            break
    return seen


def leftovers(token: str, seen: dict[int, float]) -> list:
    """Live processes carrying ``token``, or seen as the command's children, and everything below them."""
    import psutil

    found = {}
    for process in psutil.process_iter():
        try:
            if seen.get(process.pid) == process.create_time() or process.environ().get(OWNER_ENV) == token:
                found[process.pid] = process
        except psutil.Error:  # exited meanwhile, or not ours to read
            continue
    for process in list(found.values()):
        try:
            found.update((c.pid, c) for c in process.children(recursive=True))
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def _end(processes: list) -> None:
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=GRACE_SECONDS)
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=GRACE_SECONDS)


def remove_containers(token: str) -> None:
    """Force-remove the sandbox containers labelled with ``token`` (none when docker does not answer)."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        for container in client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={token}"}):
            container.remove(force=True)
    except Exception:  # no daemon, or the container went meanwhile: nothing of ours is left there
        pass


def reap(token: str, seen: dict[int, float]) -> None:
    """End every leftover of the command with ``token``; a few rounds catch what forked meanwhile."""
    for _ in range(5):
        processes = leftovers(token, seen)
        if not processes:
            break
        _end(processes)
    remove_containers(token)


def main(argv: list[str]) -> None:
    parent_pid, token = int(argv[0]), argv[1]
    reap(token, _wait_for_exit(parent_pid))


if __name__ == "__main__":
    main(sys.argv[1:])
