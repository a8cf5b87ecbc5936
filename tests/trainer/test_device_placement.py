"""Device placement on the CUDA path, checked on a CPU machine: the "current CUDA device" is pointed at
``meta`` and CUDA is reported available, so Megatron and our code take their GPU branches while every
tensor they put on the current device lands on ``meta`` (shapes only, no data).

On CPU the compatibility mode makes ``Tensor.type()`` report ``torch.cuda.*`` for every tensor, so a tensor
left on the CPU looks like a correctly placed one. Here ``.type()`` answers as CUDA would: ``torch.cuda.*``
for tensors on the current device (meta), plain ``torch.*`` for the CPU, and Megatron's checks (the
fp16/bf16 optimizer's "Wrapped parameters must be one of torch.cuda...") see the truth. Every parameter,
buffer, gradient buffer, optimizer master weight and batch tensor must end on the current device.
Catches the bug of issue 16 (RMSNorm weights from WrappedTorchNorm left on the CPU by build_gpt_model).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from tests.parallel_utils import world_of_one
from tests.trainer.batching_data import N_SAMPLES, fixed_batch

VOCAB = 300


class _TypeAsOnCuda(torch.overrides.TorchFunctionMode):
    """``Tensor.type()`` as on a GPU machine whose current device is ``meta``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = out.replace("torch.cuda.meta.", "torch.").replace("torch.cuda.", "torch.")
            if args[0].device.type == "meta":
                name = name.replace("torch.", "torch.cuda.", 1)
            return name
        return out


@pytest.fixture
def current_device_meta(monkeypatch):
    """Inside a world of one (CPU compatibility mode on): CUDA "available", current device ``meta``."""
    from megatron_hapo.parallel import cpu_compat

    with world_of_one(device_mode=True):
        monkeypatch.setattr(cpu_compat, "cuda_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: "meta")
        with _TypeAsOnCuda():
            yield torch.device("meta")


def _misplaced(named, device, dtype=None) -> list[str]:
    return [
        f"{n}: {t.device} {t.dtype}"
        for n, t in named
        if t is not None and (t.device != device or (dtype is not None and t.dtype != dtype))
    ]


@pytest.mark.parametrize("attention", ["sdpa", "unfused"])  # the local spec's two core attentions
@pytest.mark.parametrize(
    "family,dtype", [("qwen2", torch.bfloat16), ("qwen3", torch.float32)]
)  # qwen3: q/k RMSNorm too
def test_build_gpt_model_puts_everything_on_the_current_device(
    tmp_path, current_device_meta, family, dtype, attention
):
    from megatron_hapo.models import build_gpt_model
    from megatron_hapo.parallel import compute_device

    path = make_tiny_hf_model(tmp_path / "m", family, vocab_size=VOCAB)
    model = build_gpt_model(path, params_dtype=dtype, spec="local", local_attention=attention)
    named = [*model.named_parameters(), *model.named_buffers()]
    assert len(named) > 10
    assert _misplaced(named, current_device_meta, dtype) == []
    # a forward and backward on the trainer's kind of inputs stay on the device (a CPU norm weight raises
    # "Tensor on device cpu is not on the expected device meta")
    device = compute_device()
    assert device == current_device_meta
    tokens = torch.zeros(2, 12, dtype=torch.long).to(device)
    position_ids = torch.arange(12, device=device).expand(2, 12)
    # None = causal, as the trainer's micro-batches; Megatron's unfused attention then builds its default
    # mask on device "cuda", which is this GPU on a GPU machine but the CPU here: give it the mask instead
    causal = (
        torch.ones(1, 1, 12, 12, dtype=torch.bool, device=device).triu(1) if attention == "unfused" else None
    )
    logits = model(tokens, position_ids, causal)
    assert logits.device == device and logits.shape[-1] >= VOCAB
    logits.float().logsumexp(-1).sum().backward()
    assert _misplaced([(n, p.grad) for n, p in model.named_parameters()], device) == []


def test_a_mixture_of_experts_is_built_on_the_current_device(tmp_path, current_device_meta):
    """The router and every expert (Megatron's MoE layer, SequentialMLP) end on the device in bf16. Only the build:
    the forward's token dispatcher reads each expert's token count, a value ``meta`` does not hold."""
    from megatron_hapo.models import build_gpt_model

    path = make_tiny_hf_model(tmp_path / "m", "qwen3_moe", vocab_size=VOCAB)
    model = build_gpt_model(path, params_dtype=torch.bfloat16, spec="local")
    named = [*model.named_parameters(), *model.named_buffers()]
    assert sum(".mlp.experts." in n for n, _ in named) == 2 * 8 * 2  # 2 layers x 8 experts x (fc1, fc2)
    assert any(n.endswith("mlp.router.weight") for n, _ in named)
    assert _misplaced(named, current_device_meta, torch.bfloat16) == []


def test_policy_update_state_and_batch_on_the_current_device(tmp_path, current_device_meta):
    """Policy in bf16 with Megatron's fp16/bf16 optimizer (use_distributed_optimizer: false, as the tiny
    configs), then one micro-batch of the update's forward and backward through DDP. CUDA is reported, so
    ``local_attention: auto`` builds the SDPA attention, as on a GPU."""
    from megatron_hapo.config import load_config
    from megatron_hapo.parallel import compute_device
    from megatron_hapo.trainer.experience import Experience
    from megatron_hapo.trainer.policy import Policy

    path = make_tiny_hf_model(tmp_path / "m", "qwen2", vocab_size=VOCAB, dtype="float32")
    overrides = [
        f"model.hf_path={path}", "model.load_weights=true", "data.train_batch_size=4",
        "data.mini_batch_size=2", "data.micro_batch_size=4", f"sampling.train.n={N_SAMPLES}",
        "precision.dtype=bf16", "parallel.use_distributed_optimizer=false",
    ]  # fmt: skip
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False)
    policy = Policy(cfg, optimizer_steps=1)  # today's builder: "Wrapped parameters must be one of torch.cuda"
    device = current_device_meta
    assert _misplaced(policy.model.named_parameters(), device, torch.bfloat16) == []
    assert _misplaced(policy.model.named_buffers(), device) == []
    buffers = [(f"grad buffer {i}", b.grad_data) for i, b in enumerate(policy.model.buffers)]
    assert buffers and _misplaced(buffers, device, torch.float32) == []
    masters = [(f"master {i}", p) for i, g in enumerate(policy.optimizer.param_groups) for p in g["params"]]
    assert masters and _misplaced(masters, device, torch.float32) == []

    batch = fixed_batch(VOCAB)
    samples = batch.samples[:4]
    seq_len = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    args = ([s.temperatures for s in samples], [1.0] * 4, [0] * 4, list(range(4)))
    # the step's data goes to the compute device once, as learn() builds it
    exp = Experience.build(samples, *args, device=compute_device())
    assert _misplaced([(k, v) for k, v in vars(exp).items() if isinstance(v, torch.Tensor)], device) == []
    # micro-batches index the device's Experience from host-side offsets (`meta` holds no values to read)
    for mb in (exp.micro_batch(range(4), seq_len), exp.packed_micro_batch(range(4), 4 * seq_len, "mask")):
        assert _misplaced([(k, v) for k, v in vars(mb).items() if isinstance(v, torch.Tensor)], device) == []
    # routing replay's experts per token (2 layers x top-2 here) go along, and into every micro-batch
    routed = [
        dataclasses.replace(
            s, routed_experts=np.zeros((len(s.prompt_ids) + len(s.response_ids) - 1, 4), np.uint8)
        )
        for s in samples
    ]
    replay = Experience.build(routed, *args, device=compute_device(), routing=(2, 2))
    assert replay.routed_experts.device == device
    assert replay.micro_batch(range(4), seq_len).routed_experts.device == device
    assert replay.packed_micro_batch(range(4), 4 * seq_len, "mask").routed_experts.device == device
    mb = exp.micro_batch(range(4), seq_len)
    tokens, position_ids, causal, mask = mb.tokens, mb.position_ids, mb.attention_mask, mb.mask
    core = policy.model.module.decoder.layers[0].self_attention.core_attention
    assert type(core).__name__ == "SDPAttention"
    policy.model.train()
    policy.model.zero_grad_buffer()
    logits = policy.model(tokens, position_ids, causal)
    assert logits.device == device
    (logits.float().logsumexp(-1) * mask).sum().backward()
    grads = [(n, p.main_grad) for n, p in policy.model.named_parameters()]
    assert _misplaced(grads, device, torch.float32) == []
    # a packed row through the policy's per-token rotary positions, still without reading a device value
    from megatron_hapo.models.packing import forward_micro_batch

    packed = forward_micro_batch(policy.model, exp.packed_micro_batch(range(4), 4 * seq_len, "mask"))
    assert packed.device == device and packed.shape[:2] == (1, 4 * seq_len)


def test_smoke_tiny_gpt_on_the_current_device(current_device_meta):
    """parallel/smoke.py builds with use_cpu_initialization (host weights) and must move the model too."""
    from megatron_hapo.parallel.smoke import TinyGPTConfig, build_tiny_gpt

    model = build_tiny_gpt(TinyGPTConfig(num_layers=2), dtype=torch.bfloat16)
    named = [*model.named_parameters(), *model.named_buffers()]
    assert named and _misplaced(named, current_device_meta, torch.bfloat16) == []
