"""FP8 rollout on SGLang (rollout.quantization=fp8 + rollout.fp8_format=flashrl -> quantization=fp8, load_format=flash_rl). GPU only: SGLang's
FP8 linear kernels are CUDA kernels, so nothing here can run on the CPU machine.

What is checked on a GPU: the engine starts in FP8 from a bf16 checkpoint, its behaviour log-probs stay close to
the bf16 HF model's, and a weight sync of bf16 tensors is re-quantised on the way in (the served model follows
the pushed weights, not the FP8 copy made at start-up).
"""

import pytest
import torch

from megatron_hapo.config.loader import compose
from megatron_hapo.rollout.serving import engine_server_args

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

PROMPTS = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52]]
# FP8 e4m3 weights (per-channel/per-tensor scales) + dynamic FP8 activations on a 2-layer random model:
# |delta log p| per token is expected well under this; bf16-vs-bf16 is ~1e-2.
FP8_LOGPROB_TOL = 0.15


def _hf_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
    return (
        torch.log_softmax(logits, -1)
        .gather(-1, torch.tensor(response, device=ids.device)[:, None])[:, 0]
        .cpu()
    )


@pytest.fixture(scope="module")
def fp8_engine(tmp_path_factory):
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model
    from megatron_hapo.rollout import InProcessSGLangEngine

    path = make_tiny_hf_model(
        tmp_path_factory.mktemp("fp8r") / "m",
        "qwen2",
        hidden_size=128,
        dtype="bfloat16",
        initializer_range=0.2,
    )
    cfg = compose(
        None,
        [
            f"model.hf_path={path}",
            "data.train_files=[t.jsonl]",
            "rollout.quantization=fp8",
            "rollout.fp8_format=flashrl",
        ],
    ).cfg
    eng = InProcessSGLangEngine(str(path), seed=0, mem_fraction_static=0.3, **engine_server_args(cfg))
    yield path, eng
    eng.shutdown()


def _greedy(engine):
    from megatron_hapo.rollout import GenerationParams

    return engine.generate(
        PROMPTS, GenerationParams(max_new_tokens=8, temperature=1.0, top_k=1, ignore_eos=True)
    )


def test_fp8_engine_logprobs_close_to_bf16(fp8_engine):
    from transformers import AutoModelForCausalLM

    path, eng = fp8_engine
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    for s in _greedy(eng):
        ref = _hf_logprobs(hf, s.prompt_ids, s.response_ids)
        diff = (torch.tensor(s.logprobs, dtype=torch.float64) - ref).abs().max().item()
        print(f"fp8 rollout vs bf16 HF: max |delta log p| = {diff:.3e}")
        assert diff < FP8_LOGPROB_TOL


def test_weight_sync_is_requantised(fp8_engine):
    """Push 1.5x the weights (bf16) and back: the FP8 engine must follow both times."""
    from transformers import AutoModelForCausalLM

    from megatron_hapo.sync import TensorTransport, push_weights

    path, eng = fp8_engine
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    before = [s.response_ids for s in _greedy(eng)]
    push_weights(eng, TensorTransport(eng), [(n, t * 1.5) for n, t in hf.state_dict().items()], "x1.5")
    scaled = _greedy(eng)
    assert [s.response_ids for s in scaled] != before, "a sync of scaled weights did not change the FP8 model"
    hf_scaled = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        for p in hf_scaled.parameters():
            p.mul_(1.5)
    for s in scaled:
        diff = torch.tensor(s.logprobs, dtype=torch.float64) - _hf_logprobs(
            hf_scaled, s.prompt_ids, s.response_ids
        )
        assert diff.abs().max().item() < FP8_LOGPROB_TOL
    push_weights(eng, TensorTransport(eng), list(hf.state_dict().items()), "x1.0")
    assert [s.response_ids for s in _greedy(eng)] == before
