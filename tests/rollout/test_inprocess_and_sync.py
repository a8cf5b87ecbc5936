"""The in-process SGLang engine and the weight-sync transports, on the real engine (CPU).

One engine for the module (start-up is ~20-40 s on 2 cores). The model is fp32 so that log-probs can
be compared with Hugging Face's to a tight tolerance.
"""

import multiprocessing.resource_tracker
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import torch

from megatron_hapo.rollout import EngineError, GenerationParams, InProcessSGLangEngine
from megatron_hapo.sync import (
    DiskTransport,
    DistributedTransport,
    TensorTransport,
    WeightSyncError,
    WeightSynchronizer,
    make_synchronizer,
    push_weights,
)
from tests.rollout.common import (
    LOGPROB_TOL,
    PROBE,
    PROMPTS,
    hf_logprobs,
    perturbed_state,
    wait_until_in_flight,
)

pytestmark = pytest.mark.slow


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


def shared_files() -> set[str]:
    """Entries of /dev/shm and the sockets in /tmp, where SGLang's processes keep shared memory and their ZMQ
    channels (another process's files in /tmp, such as a torchrun job's directory, are not the engine's)."""
    return {str(p) for p in Path("/dev/shm").iterdir()} | {
        str(p) for p in Path("/tmp").iterdir() if _is_socket(p)
    }


def _is_socket(path: Path) -> bool:
    try:
        return path.is_socket()
    except OSError:  # removed meanwhile
        return False


def running(pid: int) -> bool:
    """Not exited (a zombie has: its parent reaps it later, as multiprocessing does for SGLang's processes)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def started(model_dir):
    """The module's engine, the processes it started, and a bystander: a child of this process started
    before it (as the trainer's scorer pool is), which the engine's shutdown must leave alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    multiprocessing.resource_tracker.ensure_running()  # this process's, whoever starts it
    before, files_before = child_pids(), shared_files()
    eng = InProcessSGLangEngine(model_dir, seed=0, dtype="float32")  # "auto" would downcast fp32 to bf16
    yield eng, child_pids() - before, shared_files() - files_before, bystander
    eng.shutdown()  # a no-op after the module's last test
    bystander.kill()
    bystander.wait()


@pytest.fixture(scope="module")
def engine(started):
    return started[0]


def greedy(engine):
    return [
        s.response_ids
        for s in engine.generate(
            PROMPTS, GenerationParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
        )
    ]


def test_generate_groups_samples_by_prompt(engine):
    samples = engine.generate(
        PROMPTS, GenerationParams(n=3, max_new_tokens=5, temperature=1.0, ignore_eos=True)
    )
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(i, j) for i in range(2) for j in range(3)]
    for s in samples:
        assert s.prompt_ids == PROMPTS[s.prompt_index]
        assert len(s.response_ids) == len(s.logprobs) == 5 and s.finish_reason == "length"
        assert all(lp <= 0 for lp in s.logprobs)
        assert s.entropies is None and s.temperatures is None  # stock sampler: no HAPO keys


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_logprobs_match_hf_at_sampling_temperature(engine, hf_model, temperature):
    samples = engine.generate(
        PROMPTS, GenerationParams(n=2, max_new_tokens=6, temperature=temperature, ignore_eos=True)
    )
    for s in samples:
        ref = hf_logprobs(hf_model, s.prompt_ids, s.response_ids, temperature)
        got = torch.tensor(s.logprobs, dtype=torch.float64)
        assert (got - ref).abs().max() < LOGPROB_TOL, (got, ref)
        if temperature != 1.0:  # the check can tell temperatures apart
            wrong = hf_logprobs(hf_model, s.prompt_ids, s.response_ids, 1.0)
            assert (got - wrong).abs().max() > 10 * LOGPROB_TOL


@pytest.mark.parametrize("transport", ["tensor", "disk", "distributed"])
def test_sync_changes_outputs_and_version_then_restores(engine, hf_model, model_dir, tmp_path, transport):
    before = greedy(engine)

    def make():
        if transport == "tensor":
            return TensorTransport(engine)
        if transport == "distributed":
            return distributed  # one group for both pushes, as in training
        return DiskTransport(engine, hf_config_dir=model_dir, out_dir=tmp_path / "weights")

    distributed = DistributedTransport(engine, group_name=f"test-{transport}")

    report = push_weights(
        engine,
        make(),
        perturbed_state(hf_model, 1.5),
        f"{transport}-1",
        bucket_bytes=64 << 10,
        verify_name=PROBE,
    )
    assert report.buckets > 1 and report.tensors == len(hf_model.state_dict()) and report.bytes > 0
    perturbed = greedy(engine)
    assert perturbed != before, "a sync of perturbed weights did not change greedy outputs"
    samples = engine.generate(PROMPTS, GenerationParams(max_new_tokens=2))
    assert {s.weight_version for s in samples} == {f"{transport}-1"}

    push_weights(engine, make(), perturbed_state(hf_model, 1.0), f"{transport}-2", verify_name=PROBE)
    assert greedy(engine) == before
    assert engine.weight_version == f"{transport}-2"
    distributed.close()


def test_sync_verification_fails_loudly_when_weights_did_not_arrive(engine, hf_model):
    class DroppingTransport(TensorTransport):
        def send(self, bucket):  # a broken transport that sends nothing
            pass

    with pytest.raises(WeightSyncError, match="differs from what was sent"):
        push_weights(
            engine, DroppingTransport(engine), perturbed_state(hf_model, 2.0), "lost", verify_name=PROBE
        )
    assert engine.health()  # the engine was resumed and still serves
    assert len(greedy(engine)) == 2


def test_engine_error_names_the_call(engine):
    with pytest.raises(EngineError, match="update_weights_from_disk"):
        engine.update_weights_from_disk("/nonexistent/checkpoint")
    assert engine.health()


def test_seeds_and_adaptive_temperatures_are_refused_without_the_hapo_sampler(engine):
    """Stock SGLang would ignore both without a word (this engine runs the stock sampler)."""
    from megatron_hapo.rollout import AdaptiveTemperature

    for params in (
        GenerationParams(seeds=(1,)),
        GenerationParams(adaptive_temperature=AdaptiveTemperature()),
    ):
        with pytest.raises(EngineError, match="need the HAPO sampler.*hapo_sampler=True"):
            engine.generate(PROMPTS[:1], params)


LONG = GenerationParams(n=2, max_new_tokens=128, temperature=1.0, ignore_eos=True)
LONG_PROMPTS = PROMPTS * 16  # one call long enough to be caught running, even on an idle machine
LONG_SAMPLES = len(LONG_PROMPTS) * LONG.n


def _generate_in_thread(engine, result):
    worker = threading.Thread(target=lambda: result.update(samples=engine.generate(LONG_PROMPTS, LONG)))
    worker.start()
    wait_until_in_flight(engine)  # the call is running
    return worker


def test_run_synchronizer_waits_for_a_generate_call_in_another_thread(engine, hf_model, model_dir):
    from megatron_hapo.config import RootConfig

    sync = make_synchronizer(RootConfig(), engine, str(model_dir))  # the defaults: in-process, wait
    assert isinstance(sync.transport, TensorTransport) and sync.policy == "wait" and sync.transforms == ()
    old, result = engine.weight_version, {}
    worker = _generate_in_thread(engine, result)
    assert worker.is_alive(), "the generate call finished before the sync could catch it in flight"
    sync.sync(perturbed_state(hf_model, 1.0), "inprocess-wait")
    assert not worker.is_alive()  # the sync waited for the running call
    worker.join()
    samples = result["samples"]
    assert len(samples) == LONG_SAMPLES and all(len(s.response_ids) == LONG.max_new_tokens for s in samples)
    assert {s.weight_version for s in samples} == {
        old
    } and sync.version == engine.weight_version == "inprocess-wait"


def test_pause_from_another_thread_is_refused_by_the_inprocess_engine(engine, hf_model):
    pausing, result = WeightSynchronizer(engine, TensorTransport(engine), policy="pause"), {}
    worker = _generate_in_thread(engine, result)
    assert worker.is_alive(), "the generate call finished before the sync could catch it in flight"
    with pytest.raises(EngineError, match="one call at a time.*rollout.engine=fleet"):
        pausing.sync(perturbed_state(hf_model, 1.0), "refused")
    worker.join(timeout=300)
    assert len(result["samples"]) == LONG_SAMPLES  # the running call was not disturbed
    assert engine.weight_version != "refused" and engine.health()


def test_shutdown_stops_the_engines_processes_and_no_other(started):
    """SGLang's own shutdown SIGKILLs every child of the calling process; the engine's stops only its own,
    and removes the shared memory and socket files those processes had no chance to. Last in the module: it
    ends the module's engine."""
    eng, engine_pids, engine_files, bystander = started
    assert engine_pids  # its scheduler and detokenizer
    assert any(f.startswith("/dev/shm/sglang_loads_") for f in engine_files)  # and its sockets in /tmp
    eng.shutdown()
    assert [p for p in engine_pids if running(p)] == []
    assert bystander.poll() is None  # SGLang's blanket kill would have left returncode -9
    # nothing left behind but the scheduler's semaphore, which multiprocessing's resource tracker (alive: it
    # was not killed) removes when this process exits
    assert sorted(f for f in engine_files if Path(f).exists() and not f.startswith("/dev/shm/sem.mp-")) == []
    eng.shutdown()  # idempotent
