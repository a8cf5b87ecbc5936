"""Routing replay (models/routing_replay.py) at world size 2 (run by tests/trainer/test_routing_replay.py).

usage: torchrun --nproc-per-node 2 job_routing_replay.py MODEL_DIR

MODEL_DIR holds a tiny Qwen3-MoE (8 experts, 2 per token). Every micro-batch replays a random routing: each token's
experts drawn at random, unlike the router's own choice.

1. Forward: the reference is each row of a micro-batch alone (batch 1, so the router's token order cannot be
   wrong), at TP = PP = 1. A micro-batch of 2 rows at TP=2 with sequence parallelism (each rank routes half the
   positions) and at PP=2 (each stage its own layers) gives the reference's logits; the same micro-batch routed
   by the model itself does not (the replay is not ignored).
2. Backward with recomputation: at PP=2 the 1F1B schedule runs micro-batch i+1's forward before micro-batch i's
   backward, in which full recomputation runs i's routers again. The gradients of 4 micro-batches with full
   recomputation equal those without it.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from megatron_hapo.checkpoint_io import load_hf_weights
from megatron_hapo.models import build_gpt_model
from megatron_hapo.models.packing import forward_micro_batch
from tests.dist_jobs.job_models_world2 import layout, log

REPLAY = {"moe_enable_routing_replay": True}
RECOMPUTE = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def micro_batches(arch, count: int, rows: int = 2, seq: int = 8, seed: int = 0) -> list[SimpleNamespace]:
    """``count`` micro-batches of random tokens, each with a random routing ``[rows, seq, layers, top_k]``."""
    g = torch.Generator().manual_seed(seed)
    moe = arch.moe
    out = []
    for _ in range(count):
        tokens = torch.randint(0, arch.vocab_size, (rows, seq), generator=g)
        draws = torch.rand(rows, seq, arch.num_layers, moe.num_experts, generator=g)
        routed = draws.argsort(-1)[..., : moe.top_k].to(torch.int16)
        out.append(batch_of(tokens, routed))
    return out


def batch_of(tokens: torch.Tensor, routed: torch.Tensor | None) -> SimpleNamespace:
    b, s = tokens.shape
    positions = torch.arange(s).expand(b, s).contiguous()
    return SimpleNamespace(tokens=tokens, position_ids=positions, attention_mask=None, routed_experts=routed)


def run_schedule(model, batches, forward_only: bool, loss=None):
    """Megatron's schedule over ``batches``: the logits of each (TP-gathered, every stage), or the backward of
    ``loss(logits)``."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, m):
        out = forward_micro_batch(m, next(data_iterator))
        if forward_only:
            return out, lambda output, non_loss_data=True: output
        return out, lambda output: (loss(output), {})

    b, s = batches[0].tokens.shape
    with torch.set_grad_enabled(not forward_only):
        store = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=[model],
            num_microbatches=len(batches),
            seq_length=s,
            micro_batch_size=b,
            forward_only=forward_only,
            collect_non_loss_data=forward_only,
        )
    if not forward_only:
        return None
    logits = torch.zeros(len(batches), b, s, model.vocab_size)  # the padded vocabulary
    if ps.is_pipeline_last_stage():
        local = torch.stack([t.float() for t in store])
        tp_group = ps.get_tensor_model_parallel_group()
        parts = [torch.empty_like(local) for _ in range(ps.get_tensor_model_parallel_world_size())]
        dist.all_gather(parts, local.contiguous(), group=tp_group)
        logits = torch.cat(parts, dim=-1)
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(
            logits, ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
        )
    return logits


def build(hf: Path, **overrides):
    model = build_gpt_model(hf, config_overrides={**REPLAY, **overrides})
    load_hf_weights(model, hf)
    return model


def check_forward(hf: Path) -> None:
    with layout(1, 1):
        model = build(hf)
        model.eval()
        batches = micro_batches(model.hapo_arch, count=2)
        rows = [batch_of(b.tokens[i : i + 1], b.routed_experts[i : i + 1]) for b in batches for i in range(2)]
        reference = run_schedule(model, rows, forward_only=True).view(2, 2, *rows[0].tokens.shape[1:], -1)
        natural = run_schedule(model, [batch_of(b.tokens, None) for b in batches], forward_only=True)
    differ = (natural - reference).abs().max().item()
    assert differ > 1e-2, f"replayed and self-routed logits agree ({differ:.2e}): the replay was ignored"
    for tp, pp, overrides in [(2, 1, {"sequence_parallel": True}), (1, 2, {})]:
        with layout(tp, pp):
            model = build(hf, **overrides)
            model.eval()
            replayed = run_schedule(model, batches, forward_only=True)
        err = (replayed - reference).abs().max().item()
        assert err < 1e-4, f"TP={tp} PP={pp}: replayed logits differ from the per-row reference by {err:.2e}"
        log(
            f"TP={tp} PP={pp}: replayed logits = per-row reference ({err:.1e}; self-routed differ by {differ:.2f})"
        )


def check_recompute(hf: Path) -> None:
    grads = []
    for overrides in ({}, RECOMPUTE):
        with layout(1, 2):
            model = build(hf, **overrides)
            model.train()
            batches = micro_batches(model.hapo_arch, count=4, seed=1)
            run_schedule(model, batches, forward_only=False, loss=lambda logits: logits.float().pow(2).mean())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, recomputed = grads
    assert plain.keys() == recomputed.keys() and plain, (sorted(plain), sorted(recomputed))
    worst = max((plain[n] - recomputed[n]).abs().max().item() for n in plain)
    assert worst < 1e-5, f"PP=2: gradients with full recomputation differ by {worst:.2e}"
    log(f"PP=2, 4 micro-batches (1F1B): gradients with and without full recomputation agree ({worst:.1e})")


def main():
    hf = Path(sys.argv[1])
    hp.init_distributed()
    assert dist.get_world_size() == 2, "run with --nproc-per-node 2"
    check_forward(hf)
    check_recompute(hf)
    log("OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
