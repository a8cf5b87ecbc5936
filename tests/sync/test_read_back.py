"""Read-back verification of every sync on a Qwen2 engine, whose SGLang class has no reader of its own.

The run's synchronizer (``make_synchronizer``) reads ``model.norm.weight`` back after each sync; the plugin's
hook (``sglang_ext/read_back.py``) serves it. A real in-process engine on CPU, bf16 as in production, so
the comparison goes through the engine's rounding.
"""

import pytest
import torch

from megatron_hapo.config import RootConfig
from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.rollout import EngineError, InProcessSGLangEngine
from megatron_hapo.sync import TensorTransport, WeightSyncError, WeightSynchronizer, make_synchronizer
from megatron_hapo.sync.factory import VERIFY_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    model_dir = make_tiny_hf_model(tmp_path_factory.mktemp("qwen2"), family="qwen2", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    engine = InProcessSGLangEngine(str(model_dir), seed=0, dtype="bfloat16")
    yield model_dir, hf.state_dict(), engine
    engine.shutdown()


def shifted(state: dict[str, torch.Tensor], delta: float) -> list[tuple[str, torch.Tensor]]:
    """The state with every weight moved by ``delta``."""
    return [(n, t + delta) for n, t in state.items()]


def test_qwen2_engine_reads_back_its_norm_through_the_plugin(qwen2):
    _, state, engine = qwen2
    got = engine.get_weight(VERIFY_NAME)
    assert torch.equal(got, state[VERIFY_NAME].to(torch.bfloat16).float())  # the engine's bf16 copy
    with pytest.raises(EngineError, match="could not read back"):  # fused inside qkv_proj by SGLang
        engine.get_weight("model.layers.0.self_attn.q_proj.weight")


def test_run_synchronizer_verifies_each_sync_and_catches_one_that_did_not_arrive(qwen2):
    model_dir, state, engine = qwen2
    sync = make_synchronizer(RootConfig(), engine, str(model_dir))
    assert sync.verify_name == VERIFY_NAME
    sync.sync(shifted(state, 0.25), "moved")  # verified: arrives, rounded to bf16
    assert torch.equal(engine.get_weight(VERIFY_NAME), (state[VERIFY_NAME] + 0.25).to(torch.bfloat16).float())

    class DroppingTransport(TensorTransport):
        def send(self, bucket):  # a transport that silently sends nothing
            pass

    sync.sync(shifted(state, 0.0), "restored")
    # A lost sync of a small step: 2^-7 is one bf16 spacing of a norm weight near 1, below any relative
    # tolerance a loose check would allow (the earlier 1e-2), and caught exactly.
    dropping = WeightSynchronizer(engine, DroppingTransport(engine), verify_name=VERIFY_NAME)
    with pytest.raises(WeightSyncError, match="did not arrive"):
        dropping.sync(shifted(state, 2**-7), "lost")
    sync.sync(shifted(state, 2**-7), "small step")  # the same step through the real transport: verified
