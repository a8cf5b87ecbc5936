"""``hapo-serve``: a rollout node's servers started from the run's own config, and the trainer's check, when it
attaches to them, that they run as its config asks. One real SGLang server on CPU (HAPO sampler), started by the
command as an operator would, and stopped by SIGTERM."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from megatron_hapo.config import load_config
from megatron_hapo.rollout import GenerationParams
from megatron_hapo.rollout.types import AdaptiveTemperature, EngineError
from megatron_hapo.trainer.rollout_stage import make_engine
from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow

CONFIG = "examples/configs/tiny_cpu.yaml"
KEY = "k-test-serve-key"


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "megatron_hapo.cli.serve", "--config", CONFIG, *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HAPO_ROLLOUT_API_KEY"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from megatron_hapo.demo.policy import make_demo_model

    return make_demo_model(tmp_path_factory.mktemp("serve_policy"))


@pytest.fixture(scope="module")
def served(policy, tmp_path_factory):
    """``hapo-serve`` on this "node": one server; yields (its URL, the process)."""
    logs = tmp_path_factory.mktemp("serve_logs")
    proc = subprocess.Popen(
        _serve_cmd(f"model.hf_path={policy}", "--port", str(_free_port()), "--log-dir", str(logs)),
        cwd=REPO_ROOT, env=_env(HAPO_ROLLOUT_API_KEY=KEY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "train with: rollout.server_addresses=" in line:
                break
        match = re.search(r"rollout\.server_addresses=\[(\S+)\]", "".join(lines))
        assert match, "".join(lines)[-3000:] + "".join(p.read_text()[-2000:] for p in logs.rglob("*.log"))
        yield match[1], proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    from megatron_hapo.rollout.fleet import free_ports

    return free_ports(1)[0]


def _attached(policy, url: str, *overrides: str):
    return load_config(
        CONFIG,
        [f"model.hf_path={policy}", "rollout.engine=fleet", "rollout.launch_servers=false",
         f"rollout.server_addresses=[{url}]", "rollout.num_servers=1", *overrides],
        check_env=False,
    )  # fmt: skip


def test_the_trainer_attaches_to_hapo_serve_servers_and_samples_with_the_hapo_sampler(
    served, policy, tmp_path, monkeypatch, caplog
):
    url, _, _ = served
    monkeypatch.setenv("HAPO_ROLLOUT_API_KEY", KEY)
    with caplog.at_level(logging.INFO, logger="megatron_hapo.rollout.serving"):
        engine = make_engine(_attached(policy, url), tmp_path)  # the trainer's own path: a router, the check
    try:
        assert f"the attached rollout servers run as the config asks: {url}" in caplog.text
        settings = engine.server_settings()[0]
        assert (settings["dtype"], settings["sleep_on_idle"]) == ("float32", True)  # model.dtype; ours
        params = GenerationParams(
            n=2, max_new_tokens=4, ignore_eos=True, adaptive_temperature=AdaptiveTemperature()
        )
        samples = engine.generate([[5, 6, 7]], params)
        assert len(samples) == 2 and all(len(s.temperatures) == 4 for s in samples)  # the plugin served them
    finally:
        engine.shutdown()  # its router; the servers are hapo-serve's


def test_servers_that_run_otherwise_are_refused_naming_the_key(served, policy, tmp_path, monkeypatch):
    url, _, _ = served
    monkeypatch.setenv("HAPO_ROLLOUT_API_KEY", KEY)
    cfg = _attached(policy, url, "model.dtype=bfloat16", "rollout.server_args={chunked_prefill_size: 64}")
    with pytest.raises(EngineError) as err:
        make_engine(cfg, tmp_path)
    message = str(err.value)
    assert f"{url} runs with dtype='float32', the run needs 'bfloat16' (model.dtype)" in message, message
    assert "the run needs 64 (rollout.server_args.chunked_prefill_size)" in message
    assert "hapo-serve --config" in message


def test_without_the_key_nothing_starts(policy):
    proc = subprocess.run(
        _serve_cmd(f"model.hf_path={policy}"), cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert (
        proc.returncode == 1 and "hapo-serve: set HAPO_ROLLOUT_API_KEY (rollout.api_key_env)" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_a_router_in_front_of_checked_servers(served, policy):
    """``--router-for``: servers that run otherwise are refused before the router starts; then a router with the
    right config, stopped by SIGTERM."""
    url, _, _ = served
    env = _env(HAPO_ROLLOUT_API_KEY=KEY)
    refused = subprocess.run(
        _serve_cmd(f"model.hf_path={policy}", "model.dtype=bfloat16", "--router-for", url), cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the run needs 'bfloat16' (model.dtype)" in refused.stderr and "router" not in refused.stdout

    port = _free_port()
    router = subprocess.Popen(
        _serve_cmd(f"model.hf_path={policy}", "--router-for", url, "--port", str(port)), cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        first = router.stdout.readline()
        assert f"hapo-serve: router http://127.0.0.1:{port} in front of {url}" in first, first
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=60) == 0
    finally:
        if router.poll() is None:
            router.kill()


def test_sigterm_stops_the_servers(served):
    """Last in the module: it ends the module's server."""
    url, proc, lines = served
    assert requests.get(url + "/health", timeout=30).status_code == 200
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + out
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/health", timeout=10)
