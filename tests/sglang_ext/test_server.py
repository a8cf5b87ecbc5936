"""The HAPO sampler behind SGLang's HTTP server, next to a stock server on the same checkpoint.

Two servers start concurrently for the module, identical but for ``--sampling-backend``:

* ``hapo``: the explicit backend name, which SGLang rewrites to ``pytorch`` on CPU; the plugin finds the
  request in the raw server arguments, so no environment variable is set here (the engine tests cover
  ``HAPO_SGLANG_SAMPLER=1``);
* ``pytorch``: stock SGLang (the plugin is loaded but not requested).

The first request each server sees is the same batch of non-HAPO requests: with the same seed, the HAPO
server must return the stock server's tokens and log-probs bit for bit.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
import torch

from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.rollout.sampler_wire import decode_outputs, encode_request
from megatron_hapo.rollout.types import AdaptiveTemperature
from tests.sglang_ext.reference import (
    CPU_ENGINE_ARGS,
    ENTROPY_TOL,
    LOGPROB_TOL,
    TEMPERATURE_TOL,
    WRONG_HYPOTHESIS_MIN_ERR,
    HFReference,
    max_abs,
    require_entry_point,
    returned,
)

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 600  # ~30 s on an idle 2-core machine; much more when the cores are shared

# Non-HAPO requests of every kind: sent first to both servers.
STOCK_PROBE = {
    "input_ids": [[1, 30 + i, 60 + i] for i in range(6)],
    "sampling_params": [
        {"temperature": 0.9, "max_new_tokens": 12, "ignore_eos": True},
        {"temperature": 0.7, "top_k": 20, "max_new_tokens": 12, "ignore_eos": True},
        {"temperature": 1.0, "top_p": 0.8, "max_new_tokens": 12, "ignore_eos": True},
        {"temperature": 1.2, "min_p": 0.05, "max_new_tokens": 12, "ignore_eos": True},
        {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True},
        {
            "temperature": 0.8,
            "max_new_tokens": 12,
            "ignore_eos": True,
            "custom_params": {"hapo": {"enabled": False, "tau": 0.3}},
        },
    ],
    "return_logprob": True,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_cmd(model_dir, port, backend):
    flags = {
        "--model-path": str(model_dir),
        "--device": CPU_ENGINE_ARGS["device"],
        "--attention-backend": CPU_ENGINE_ARGS["attention_backend"],
        "--sampling-backend": backend,
        "--mem-fraction-static": str(CPU_ENGINE_ARGS["mem_fraction_static"]),
        "--max-total-tokens": str(CPU_ENGINE_ARGS["max_total_tokens"]),
        "--dtype": CPU_ENGINE_ARGS["dtype"],
        "--random-seed": str(CPU_ENGINE_ARGS["random_seed"]),
        "--log-level": CPU_ENGINE_ARGS["log_level"],
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    cmd = [sys.executable, "-m", "sglang.launch_server"]
    for flag, value in flags.items():
        cmd += [flag, value]
    return cmd + ["--disable-cuda-graph", "--disable-overlap-schedule", "--skip-server-warmup"]


class _Server:
    def __init__(self, model_dir, backend, log_path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k != "HAPO_SGLANG_SAMPLER"}
        env["HF_HUB_OFFLINE"] = "1"
        with open(log_path, "w") as log:
            # Own session: teardown signals exactly this server's process group (it spawns children).
            self.proc = subprocess.Popen(
                _server_cmd(model_dir, self.port, backend),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, n=4000) -> str:
        with open(self.log_path) as f:
            return f.read()[-n:]

    def wait_ready(self, deadline):
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        pytest.fail(f"server not ready after {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def generate(self, payload):
        return requests.post(f"{self.url}/generate", json=payload, timeout=300)

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_hf_model(
        tmp_path_factory.mktemp("tiny_qwen2"),
        family="qwen2",
        vocab_size=512,
        dtype="float32",
        initializer_range=0.3,
    )


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    """(hapo, stock, first responses of each to STOCK_PROBE)."""
    require_entry_point()
    logs = tmp_path_factory.mktemp("server_logs")
    hapo = _Server(model_dir, "hapo", logs / "hapo.log")
    stock = _Server(model_dir, "pytorch", logs / "stock.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        hapo.wait_ready(deadline)
        stock.wait_ready(deadline)
        first = {}
        for name, server in (("hapo", hapo), ("stock", stock)):
            reply = server.generate(STOCK_PROBE)
            assert reply.status_code == 200, reply.text
            first[name] = reply.json()
        yield hapo, stock, first
    finally:
        hapo.stop()
        stock.stop()


@pytest.fixture(scope="module")
def hf(model_dir):
    return HFReference(model_dir)


def test_non_hapo_requests_are_stock_bit_for_bit(servers):
    hapo, stock, first = servers
    assert "HAPO adaptive-temperature sampler active (--sampling-backend hapo" in hapo.log_tail(10**7)
    for h, s in zip(first["hapo"], first["stock"], strict=True):
        assert h["output_ids"] == s["output_ids"]
        assert h["meta_info"]["output_token_logprobs"] == s["meta_info"]["output_token_logprobs"]
        assert "hapo_temperature" not in s["meta_info"]
        temps, _ = decode_outputs(h["meta_info"])  # the HAPO server reports T for every token
    base = [p["temperature"] or 1.0 for p in STOCK_PROBE["sampling_params"]]  # greedy rows run at T = 1
    got = [h["meta_info"]["hapo_temperature"][0] for h in first["hapo"]]
    assert got == [torch.tensor(t, dtype=torch.float32).item() for t in base]


def test_http_outputs_are_json_floats_aligned_and_match_hf(servers, hf):
    hapo, _, _ = servers
    prompts = [[1, 11, 12, 13], [1, 14, 15]]
    stats = [EntropyStats(0.9, 0.3, 1.0, 1.0), EntropyStats(1.3, 0.5, 0.7, -0.7)]
    tau, base = 0.3, 0.9
    reply = hapo.generate(
        {
            "input_ids": prompts,
            "sampling_params": [
                {
                    "temperature": base,
                    "max_new_tokens": 16,
                    "ignore_eos": True,
                    "custom_params": encode_request(AdaptiveTemperature(s, tau=tau)),
                }
                for s in stats
            ],
            "return_logprob": True,
        }
    )
    assert reply.status_code == 200, reply.text
    worst = {"T": 0.0, "H": 0.0, "lp": 0.0, "lp_at_Tbase": float("inf")}
    for prompt, s, out in zip(prompts, stats, reply.json()):
        meta = out["meta_info"]
        temps_list, ents_list = decode_outputs(meta)
        assert all(isinstance(v, float) for v in temps_list + ents_list)
        temps, ents, lps = returned(meta)
        t_ref, h_ref, lp_ref, z = hf.expected(prompt, out["output_ids"], base, s, tau)
        worst["T"] = max(worst["T"], max_abs(temps, t_ref))
        worst["H"] = max(worst["H"], max_abs(ents, h_ref))
        worst["lp"] = max(worst["lp"], max_abs(lps, lp_ref))
        y = torch.tensor(out["output_ids"])[:, None]
        wrong = max_abs(lps, torch.log_softmax(z / base, -1).gather(1, y)[:, 0])
        worst["lp_at_Tbase"] = min(worst["lp_at_Tbase"], wrong)
    print(f"\nHTTP, max |returned - HF|: {worst}")
    assert worst["T"] <= TEMPERATURE_TOL and worst["H"] <= ENTROPY_TOL and worst["lp"] <= LOGPROB_TOL
    assert worst["lp_at_Tbase"] > WRONG_HYPOTHESIS_MIN_ERR


def test_http_rejects_bad_or_unservable_hapo_requests(servers):
    hapo, stock, _ = servers
    bad = hapo.generate(
        {
            "input_ids": [1, 5],
            "sampling_params": {
                "max_new_tokens": 2,
                "custom_params": {"hapo": {"enabled": True, "tau": 0.1, "pivot": 1.0}},
            },
        }
    )
    assert bad.status_code == 400 and "all four or none" in bad.text
    unserved = stock.generate(
        {
            "input_ids": [1, 5],
            "sampling_params": {"max_new_tokens": 2, "custom_params": encode_request(AdaptiveTemperature())},
        }
    )
    assert unserved.status_code == 400 and "does not run the HAPO sampler" in unserved.text
