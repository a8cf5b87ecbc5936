"""Test-wide settings. Runs before any test module imports megatron."""

import os

# megatron-core applies torch.compile (jit_fuser) at import; on CPU it only adds seconds.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
# the sampler tests compare its entropies with token_entropy bit for bit: run the definition itself
# (tests/sglang_ext/test_native_entropy.py and test_compiled_entropy.py cover the fast kernels)
os.environ.setdefault("HAPO_ENTROPY_KERNEL", "eager")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download: models and data are built locally

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import demo_policy_build  # noqa: E402

DEMO_GAIN_TEST = "tests/demo/test_demo_gain.py"

# Figures the fault-injection suite (tests/faults) reports at the end of the run, e.g.
# "signals: 12/12 saved and resumed exactly". One line per category; tests add to them with `fault_figures`.
_FAULT_FIGURES: dict[str, list[int | str]] = {}


@pytest.fixture
def fault_figures():
    """``report(category, ok, total, what)``: add ``ok`` of ``total`` cases to the category's summary line."""

    def report(category: str, ok: int, total: int, what: str) -> None:
        row = _FAULT_FIGURES.setdefault(category, [0, 0, what])
        row[0] += ok
        row[1] += total

    return report


def pytest_terminal_summary(terminalreporter):
    if _FAULT_FIGURES:
        terminalreporter.section("fault injection")
        for category, (ok, total, what) in sorted(_FAULT_FIGURES.items()):
            terminalreporter.write_line(f"{category}: {ok}/{total} {what}")


def pytest_collection_modifyitems(config, items):
    # the demo's gain test last: its policy builds in the background meanwhile (tests/demo_policy_build.py)
    demo = [item for item in items if item.nodeid.startswith(DEMO_GAIN_TEST)]
    items[:] = [item for item in items if not item.nodeid.startswith(DEMO_GAIN_TEST)] + demo
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(
        reason="needs a CUDA GPU (none on this machine); run benchmarks/gpu/run_all.sh on one"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any(item.nodeid.startswith(DEMO_GAIN_TEST) for item in session.items):  # selected, not deselected
        demo_policy_build.start()


def pytest_sessionfinish(session):
    demo_policy_build.stop()


@pytest.fixture(scope="session")
def small_policy(tmp_path_factory):
    """A tiny policy briefly SFT-warmed on the bundled task (40 steps: it answers, not yet well); built
    once per test session for the short end-to-end runs."""
    from megatron_hapo.demo.policy import make_demo_model

    return make_demo_model(
        tmp_path_factory.mktemp("small_policy"),
        sft_steps=40,
        sft_files=["examples/data/tiny_math_train.parquet"],
    )


@pytest.fixture(scope="session")
def served_policy(small_policy, tmp_path_factory):
    """``hapo-serve`` serving ``small_policy`` on the tiny config, one server, as a rollout node runs it: attached to
    by tests/rollout/test_serve.py, by tests/trainer/test_over_sampling.py's rollout stage and by the trainer runs of
    tests/trainer/test_overlap.py (one server start for all three). Idle between them (sleep on idle). Its teardown stops it by SIGTERM and checks it stopped cleanly."""
    from megatron_hapo.rollout.fleet import free_ports
    from tests.fleet_utils import start_hapo_serve, stop_hapo_serve

    served = start_hapo_serve(small_policy, tmp_path_factory.mktemp("served_logs"), free_ports(1)[0])
    yield served
    stop_hapo_serve(served)


@pytest.fixture(autouse=True)
def _no_leaked_process_group():
    """A test that creates an in-process world of one tears it down, so test order never matters."""
    import torch.distributed as dist

    existed = dist.is_initialized()
    yield
    if not existed and dist.is_initialized():
        import sys

        if "megatron.core" in sys.modules:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
