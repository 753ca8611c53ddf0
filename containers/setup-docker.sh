#!/usr/bin/env bash
# Make the sandbox's Docker backend usable: start dockerd if it does not answer, then build the
# executor image offline (from this machine's Python, no registry) if it is missing or stale.
# Idempotent; run as root. Installs nothing: CI installs docker.io beforehand.
#   containers/setup-docker.sh [PYTHON]     PYTHON defaults to .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-.venv/bin/python}"

if ! docker info >/dev/null 2>&1; then
    echo "setup-docker: starting dockerd (log: /tmp/dockerd.log)"
    # No bridge/iptables: sandbox containers run with --network none anyway. vfs works on any filesystem.
    nohup dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs >/tmp/dockerd.log 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "setup-docker: dockerd did not answer within 60 s" >&2; tail -20 /tmp/dockerd.log >&2; exit 1; }
fi

IMAGE=$("$PYTHON" -c 'from azr.config import ExecutorConfig; from azr.sandbox.docker_backend import image_ref; print(image_ref(ExecutorConfig().image))')
if PROBLEM=$("$PYTHON" -c '
import sys
from azr.config import ExecutorConfig
from azr.sandbox.docker_backend import docker_client, image_problem
problem = image_problem(docker_client(), ExecutorConfig().image)
print(problem or "")
sys.exit(1 if problem else 0)'); then
    echo "setup-docker: $IMAGE is current"
else
    echo "setup-docker: $PROBLEM; building it offline"
    start=$(date +%s)
    "$PYTHON" -c 'from cli.main import app; app()' sandbox build --offline
    echo "setup-docker: image built in $(( $(date +%s) - start )) s"
fi
