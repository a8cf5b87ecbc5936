"""Fixtures for calling SGLang's Sampler and SamplingBatchInfo directly, without an engine."""

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def sglang_context():
    """Publish a CPU server-args context and a fake TP group, as the scheduler would; restored after.

    Both overrides are context managers held for the module: if one were garbage-collected, SGLang
    would undo it at an arbitrary point.
    """
    from sglang.srt.runtime_context import get_context, get_parallel

    with get_context().override_server_args(device="cpu", sampling_backend="pytorch") as server_args:  # noqa: SIM117
        with get_parallel().override(tp_group=SimpleNamespace(device_group=None)):
            yield server_args


@pytest.fixture(scope="module")
def registered(sglang_context):
    """The plugin registered in this process (idempotent; as SGLang's load_plugins() would do)."""
    import sglang_ext

    sglang_ext.register()
