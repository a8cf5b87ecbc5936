"""HAPO steps 4-6 (advantages, old-policy pass, entropy statistics, policy update) on a fixed batch, with
no rollout engine: on CPU here, on CUDA (bf16, NCCL world of one) on a GPU machine (benchmarks/gpu/run_all.sh).
Also Megatron's GPTModel on CUDA in bf16 against the Hugging Face model on CPU in fp32, same weights."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from tests.parallel_utils import world_of_one
from tests.trainer.batching_data import N_SAMPLES, fixed_batch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_hf_model(
        tmp_path_factory.mktemp("learn") / "m", "qwen2", vocab_size=300, dtype="float32"
    )


@pytest.mark.parametrize("device", DEVICES)
def test_two_hapo_updates_on_a_fixed_batch(tiny_model, device):
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.loop import learn
    from megatron_hapo.trainer.policy import Policy

    overrides = [
        f"model.hf_path={tiny_model}", "model.load_weights=true", "data.train_batch_size=4",
        "data.mini_batch_size=2", "data.micro_batch_size=4", f"sampling.train.n={N_SAMPLES}",
        "optim.lr=1e-3", f"precision.dtype={'bf16' if device == 'cuda' else 'fp32'}",
    ]  # fmt: skip
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides, check_env=False)
    batch = fixed_batch(300)
    with world_of_one(device_mode=device == "cpu"):
        policy = Policy(cfg, optimizer_steps=4)
        before = {n: p.detach().float().clone() for n, p in policy.model.named_parameters()}
        stats1, m1 = learn(cfg, policy, batch)
        stats2, m2 = learn(cfg, policy, batch)
        after = dict(policy.model.named_parameters())
    for m in (m1, m2):
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert m["optim/grad_norm"] > 0 and m["actor/n_tokens"] == sum(
            len(s.response_ids) for s in batch.samples
        )
        assert 0.95 - 1e-3 <= m["temperature/min"] <= m["temperature/max"] <= 1.05 + 1e-3
    assert stats1.sigma > 0 and stats2.sigma > 0
    moved = [n for n, p in after.items() if not torch.equal(p.detach().float(), before[n])]
    assert len(moved) == len(before)  # every tensor received a gradient step
    assert m1["entropy/mean"] != m2["entropy/mean"]  # step 2's old-policy pass saw the updated model


def test_token_sum_norm_divides_by_the_padded_response_length(tiny_model):
    """agg=seq-mean-token-sum-norm with token_sum_norm_len null divides by rollout.max_new_tokens, as Dr. GRPO
    and verl do: the same update as with that constant set (it divided by the step's longest prompt + response,
    so the loss scale moved with the prompts)."""
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.loop import learn
    from megatron_hapo.trainer.policy import Policy

    base = [
        f"model.hf_path={tiny_model}", "model.load_weights=true", "data.train_batch_size=4",
        "data.mini_batch_size=4", "data.micro_batch_size=4", f"sampling.train.n={N_SAMPLES}", "optim.lr=1e-3",
        "precision.dtype=fp32", "algorithm.loss.agg=seq-mean-token-sum-norm", "rollout.max_new_tokens=64",
    ]  # fmt: skip
    results = []
    for extra in ([], ["algorithm.loss.token_sum_norm_len=64"], ["algorithm.loss.token_sum_norm_len=16"]):
        cfg = load_config("examples/configs/tiny_cpu.yaml", base + extra, check_env=False)
        with world_of_one(device_mode=True):
            policy = Policy(cfg, optimizer_steps=1)
            _, metrics = learn(cfg, policy, fixed_batch(300))
            results.append(
                (metrics["actor/pg_loss"], [p.detach().clone() for p in policy.model.parameters()])
            )
    (loss, params), (loss_64, params_64), (loss_16, _) = results
    assert loss == loss_64 and all(torch.equal(a, b) for a, b in zip(params, params_64, strict=True))
    assert loss_16 == pytest.approx(4 * loss)  # the constant is what divides


@pytest.mark.gpu
def test_megatron_on_cuda_bf16_matches_hf_on_cpu(tiny_model):
    """Megatron GPTModel (local spec, bf16, CUDA, NCCL) vs transformers (fp32, CPU) on the same weights."""
    from transformers import AutoModelForCausalLM

    from megatron_hapo.checkpoint_io import load_hf_weights
    from megatron_hapo.models import build_gpt_model

    tokens = torch.randint(3, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    ref = torch.log_softmax(hf(tokens).logits.float(), -1)
    with world_of_one(device_mode=False):
        model = build_gpt_model(tiny_model, params_dtype=torch.bfloat16, spec="local")
        load_hf_weights(model, tiny_model)
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        logits = model(tokens.cuda(), pos.cuda(), attention_mask=None)[..., :300]
        got = torch.log_softmax(logits.float(), -1).cpu()
        loss = -got[:, :-1].gather(-1, tokens[:, 1:, None]).mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    want = -ref[:, :-1].gather(-1, tokens[:, 1:, None]).mean()
    print(f"mean NLL: megatron cuda bf16 {loss.item():.5f}, hf cpu fp32 {want.item():.5f}")
    assert abs(loss.item() - want.item()) < 2e-2 * max(1.0, abs(want.item()))
    assert (got - ref).abs().max() < 0.15  # bf16 logits of a tiny model
