"""Issue 20: a weight sync while generate requests are in flight, for each ``rollout.sync_policy``, on a
real 1-server SGLang fleet on CPU. The requests are submitted from another thread (as the overlapped
loop will); none is lost, each sample is whole, and the engine serves the new version afterwards.

* wait: the in-flight requests finish on the old weights before the sync;
* pause: they are retracted, and finish after it (SGLang reports the version spans of each sample);
* abort: they are aborted and resubmitted after it, whole, on the new weights.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from megatron_hapo.rollout import GenerationParams
from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet
from megatron_hapo.sync import DiskTransport, WeightSynchronizer
from tests.rollout.common import PROMPTS, perturbed_state, wait_until_in_flight

pytestmark = pytest.mark.slow

# the 32 sequences decode 512 tokens in ~6 s on an idle 2-core CPU: twelve times the settling pause below, so the
# requests are still decoding when the sync's abort or pause reaches the server (asserted, not assumed)
LONG = GenerationParams(n=2, max_new_tokens=512, temperature=1.0, ignore_eos=True)
IN_FLIGHT = PROMPTS * 8  # all running at once (fewer than the fleet's max_concurrent_requests)
GREEDY = GenerationParams(n=1, max_new_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def fleet(model_dir, tmp_path_factory):
    f = SGLangFleet(
        FleetConfig(
            model_path=str(model_dir), num_servers=1, router=False, progress=False,
            log_dir=str(tmp_path_factory.mktemp("fleet-logs")), server_args={"dtype": "float32"},
            request_timeout_s=300,
        )
    )  # fmt: skip
    yield f
    f.shutdown()


def _sync_during_generation(fleet, model_dir, tmp_path, hf_model, policy, scale, version):
    before = [s.response_ids for s in fleet.generate(PROMPTS, GREEDY)]
    old = fleet.weight_version
    synchronizer = WeightSynchronizer(
        fleet, DiskTransport(fleet, model_dir, tmp_path / "weights"), policy=policy, timeout_s=300
    )
    result: dict = {}

    def generate():
        try:
            result["samples"] = fleet.generate(IN_FLIGHT, LONG)
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=generate)
    worker.start()
    wait_until_in_flight(fleet, count=len(IN_FLIGHT))  # every request is sent
    # "sent" is counted before the HTTP post leaves: give the posts time to reach the scheduler, or a fast
    # abort can overtake them (they then finish on the old weights: nothing lost, but nothing aborted)
    time.sleep(0.5)
    in_flight_at_sync = worker.is_alive()
    synchronizer.sync(perturbed_state(hf_model, scale), version)
    finished_by_sync = not worker.is_alive()
    worker.join(timeout=300)
    assert "error" not in result, result.get("error")
    samples = result["samples"]
    # none lost, every one whole (nothing aborted reached the caller)
    assert in_flight_at_sync, "the requests finished before the sync could catch them in flight"
    assert len(samples) == len(IN_FLIGHT) * LONG.n
    assert all(len(s.response_ids) == LONG.max_new_tokens and s.finish_reason == "length" for s in samples)
    # and afterwards the engine serves the new weights under the new version
    after = fleet.generate(PROMPTS, GREEDY)
    assert {s.weight_version for s in after} == {version} and [s.response_ids for s in after] != before
    return samples, old, finished_by_sync


def test_wait_lets_requests_in_flight_finish_on_the_old_weights(fleet, model_dir, tmp_path, hf_model):
    samples, old, finished_by_sync = _sync_during_generation(
        fleet, model_dir, tmp_path, hf_model, "wait", 1.3, "wait-1"
    )
    assert finished_by_sync  # the sync waited for them
    assert {s.weight_version for s in samples} == {old}


def test_pause_retracts_requests_and_finishes_them_on_the_new_weights(fleet, model_dir, tmp_path, hf_model):
    samples, old, finished_by_sync = _sync_during_generation(
        fleet, model_dir, tmp_path, hf_model, "pause", 1.6, "pause-1"
    )
    assert not finished_by_sync  # the sync did not wait for them
    versions = [s.weight_version for s in samples]
    # retracted requests finished on the new weights; one that ended before the pause keeps the old version
    assert set(versions) <= {old, "pause-1"} and "pause-1" in versions, versions


def test_abort_resubmits_requests_after_the_sync(fleet, model_dir, tmp_path, hf_model, caplog):
    with caplog.at_level(logging.INFO, logger="megatron_hapo.rollout.fleet"):
        samples, old, _ = _sync_during_generation(
            fleet, model_dir, tmp_path, hf_model, "abort", 1.0, "abort-1"
        )
    assert "a weight sync aborted a request" in caplog.text  # SGLang's abort reached them
    versions = [s.weight_version for s in samples]
    # aborted requests came back whole, generated again on the new weights; a request that had ended before
    # the abort keeps its old version (nothing is lost either way: _sync_during_generation counts them)
    assert set(versions) <= {old, "abort-1"} and "abort-1" in versions, versions
