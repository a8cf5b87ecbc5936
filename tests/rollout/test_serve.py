"""``hapo-serve``: a rollout node's servers started from the run's own config, and the trainer's check, when it
attaches to them, that they run as its config asks. One real SGLang server on CPU (HAPO sampler), started by the
command as an operator would (the session's ``served_policy``; its teardown checks that SIGTERM stops it).
A whole trainer run attached to it: tests/trainer/test_overlap.py."""

from __future__ import annotations

import logging
import signal
import subprocess
import time

import pytest
import requests

from megatron_hapo.config import load_config
from megatron_hapo.rollout import GenerationParams
from megatron_hapo.rollout.fleet import free_ports
from megatron_hapo.rollout.types import AdaptiveTemperature, EngineError
from megatron_hapo.trainer.rollout_stage import make_engine
from tests.fleet_utils import SERVE_CONFIG, SERVE_KEY, serve_cmd, serve_env, server_pid
from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow


def _attached(policy, url: str, *overrides: str):
    return load_config(
        SERVE_CONFIG,
        [f"model.hf_path={policy}", "rollout.engine=fleet", "rollout.launch_servers=false",
         f"rollout.server_addresses=[{url}]", "rollout.num_servers=1", *overrides],
        check_env=False,
    )  # fmt: skip


def test_the_trainer_attaches_to_hapo_serve_servers_and_samples_with_the_hapo_sampler(
    served_policy, small_policy, tmp_path, monkeypatch, caplog
):
    url = served_policy.url
    monkeypatch.setenv("HAPO_ROLLOUT_API_KEY", SERVE_KEY)
    with caplog.at_level(logging.INFO, logger="megatron_hapo.rollout.serving"):
        engine = make_engine(_attached(small_policy, url), tmp_path)  # the trainer's own path: check, router
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


def test_servers_that_run_otherwise_are_refused_naming_the_key(
    served_policy, small_policy, tmp_path, monkeypatch
):
    url = served_policy.url
    monkeypatch.setenv("HAPO_ROLLOUT_API_KEY", SERVE_KEY)
    cfg = _attached(
        small_policy, url, "model.dtype=bfloat16", "rollout.server_args={chunked_prefill_size: 64}"
    )
    with pytest.raises(EngineError) as err:
        make_engine(cfg, tmp_path)
    message = str(err.value)
    assert f"{url} runs with dtype='float32', the run needs 'bfloat16' (model.dtype)" in message, message
    assert "the run needs 64 (rollout.server_args.chunked_prefill_size)" in message
    assert "hapo-serve --config" in message


def test_without_the_key_nothing_starts(small_policy):
    proc = subprocess.run(
        serve_cmd(small_policy), cwd=REPO_ROOT, env=serve_env(), capture_output=True, text=True, timeout=300
    )
    assert (
        proc.returncode == 1 and "hapo-serve: set HAPO_ROLLOUT_API_KEY (rollout.api_key_env)" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_a_router_in_front_of_checked_servers(served_policy, small_policy, tmp_path):
    """``--router-for``: servers that run otherwise are refused before the router starts; then a router with the
    right config, stopped by SIGTERM."""
    url = served_policy.url
    env = serve_env(HAPO_ROLLOUT_API_KEY=SERVE_KEY)
    refused = subprocess.run(
        serve_cmd(small_policy, "model.dtype=bfloat16", "--router-for", url, "--log-dir", str(tmp_path)), cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "the run needs 'bfloat16' (model.dtype)" in refused.stderr and "router" not in refused.stdout

    port = free_ports(1)[0]
    router = subprocess.Popen(
        serve_cmd(small_policy, "--router-for", url, "--port", str(port), "--log-dir", str(tmp_path)), cwd=REPO_ROOT, env=env,
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


def test_a_stop_during_start_up_leaves_no_server_behind(small_policy, tmp_path):
    """SIGTERM while the server loads, as a scheduler cancelling the job sends it: exit 0, saying so, and the server
    it had launched is stopped. (Before, the signal's default action killed hapo-serve alone, and the server, in a
    session of its own, went on running; the router test met the same window as a failed exit code.)"""
    proc = subprocess.Popen(
        serve_cmd(small_policy, "--port", str(free_ports(1)[0]), "--log-dir", str(tmp_path)), cwd=REPO_ROOT,
        env=serve_env(HAPO_ROLLOUT_API_KEY=SERVE_KEY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while server_pid(tmp_path, 0) is None:  # launched: its key file is on its command line
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.1)
        time.sleep(0.5)  # hapo-serve is past the spawn, and the server still imports SGLang (seconds)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "hapo-serve: SIGTERM during start-up: stopped before serving" in out and "up, logs in" not in out
    assert server_pid(tmp_path, 0) is None
