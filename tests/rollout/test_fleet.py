"""A 2-server SGLang fleet behind sglang-router on CPU: generation, disk sync, pause/resume, failures.

Start-up launches two HTTP servers and the router (~40-120 s on 2 cores, once for the module). The
test that kills a server runs last.
"""

import logging
import threading
import time

import pytest
import torch

from megatron_hapo.rollout import EngineError, GenerationParams
from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet
from megatron_hapo.sync import DiskTransport, DistributedTransport, push_weights
from tests.rollout._common import LOGPROB_TOL, PROBE, PROMPTS, hf_logprobs, perturbed_state

pytestmark = pytest.mark.slow

GREEDY = GenerationParams(n=2, max_new_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def fleet(model_dir, tmp_path_factory):
    config = FleetConfig(
        model_path=str(model_dir),
        num_servers=2,
        log_dir=str(tmp_path_factory.mktemp("fleet-logs")),
        server_args={"dtype": "float32"},
        request_timeout_s=300,
    )
    f = SGLangFleet(config)
    yield f
    f.shutdown()


def test_generate_through_router_matches_hf_logprobs(fleet, hf_model):
    samples = fleet.generate(
        PROMPTS * 2, GenerationParams(n=2, max_new_tokens=5, temperature=0.8, ignore_eos=True)
    )
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(i, j) for i in range(4) for j in range(2)]
    for s in samples:
        ref = hf_logprobs(hf_model, s.prompt_ids, s.response_ids, 0.8)
        assert (torch.tensor(s.logprobs, dtype=torch.float64) - ref).abs().max() < LOGPROB_TOL


def test_disk_and_distributed_sync_reach_every_server(fleet, hf_model, model_dir, tmp_path):
    before = [s.response_ids for s in fleet.generate(PROMPTS, GREEDY)]
    transport = DiskTransport(fleet, hf_config_dir=model_dir, out_dir=tmp_path / "weights")
    push_weights(fleet, transport, perturbed_state(hf_model, 1.5), "fleet-1", verify_name=PROBE)
    # every server answers with the new weights and version (direct calls, bypassing the router)
    for server in fleet.servers:
        single = SGLangFleet(FleetConfig(attach_urls=(server.url,), router=False))
        out = single.generate(PROMPTS, GREEDY)
        assert [s.response_ids for s in out] != before and {s.weight_version for s in out} == {"fleet-1"}
    # back to the original weights by broadcast: one trainer rank + one rank per server, gloo on CPU
    distributed = DistributedTransport(fleet, group_name="fleet-test")
    push_weights(fleet, distributed, perturbed_state(hf_model, 1.0), "fleet-2", bucket_bytes=64 << 10)
    distributed.close()
    out = fleet.generate(PROMPTS, GREEDY)
    assert [s.response_ids for s in out] == before and {s.weight_version for s in out} == {"fleet-2"}


def test_pause_with_requests_in_flight_loses_none(fleet):
    params = GenerationParams(n=2, max_new_tokens=48, temperature=1.0, ignore_eos=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(samples=fleet.generate(PROMPTS * 4, params)))
    worker.start()
    time.sleep(0.5)  # let the requests start decoding
    fleet.pause()
    time.sleep(1.0)
    assert worker.is_alive(), "requests finished before the pause could catch them in flight"
    fleet.resume()
    worker.join(timeout=300)
    samples = result["samples"]
    assert len(samples) == 16 and all(
        len(s.response_ids) == 48 and s.finish_reason == "length" for s in samples
    )


def test_killed_server_is_reported_and_fleet_keeps_serving(fleet, caplog):
    strict = SGLangFleet(
        FleetConfig(attach_urls=tuple(s.url for s in fleet.servers), router=False, on_server_failure="fail")
    )
    victim = fleet.servers[1]
    victim.process.kill()
    victim.process.wait(timeout=30)
    with pytest.raises(EngineError, match=victim.url):
        strict.generate(PROMPTS, GREEDY)
    with caplog.at_level(logging.ERROR, logger="megatron_hapo.rollout.fleet"):
        samples = fleet.generate(PROMPTS * 3, GREEDY)
    assert len(samples) == 12 and len(fleet.servers) == 1
    assert victim.url in caplog.text and "exit code" in caplog.text
