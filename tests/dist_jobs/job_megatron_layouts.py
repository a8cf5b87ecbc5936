"""Megatron-Core on CPU/gloo at several TP/PP layouts (run by tests/test_megatron_parallel.py).

usage: torchrun --nproc-per-node {2,4} job_megatron_layouts.py SHARED_DIR

World 2: TP=2 and PP=2 load a TP=1 checkpoint and reproduce its loss (forward + backward); swapping
the two TP shards of one weight changes the loss; a checkpoint written at TP=2 reloads at TP=1 with
identical logits; one DDP + distributed-optimizer step at DP=2 lowers the loss.
World 4: the same at TP=2 x PP=2, including the distributed-optimizer step.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp
from megatron_hapo.parallel.checkpointing import load_sharded, save_sharded
from megatron_hapo.parallel.smoke import (
    TinyGPTConfig,
    build_tiny_gpt,
    build_trainable,
    forward_backward,
    synthetic_batch,
    train_step,
)

LOSS_TOL = 1e-5


def log(msg):
    if dist.get_rank() == 0:
        print(f"[job] {msg}", flush=True)


def full_logits(model, batch):
    """Logits [b, s, V] gathered over the TP group (last PP stage only; None elsewhere)."""
    from megatron.core import parallel_state as ps

    if not ps.is_pipeline_last_stage():
        return None
    with torch.no_grad():
        local = model(batch["tokens"], batch["position_ids"], batch["attention_mask"])
    parts = [torch.empty_like(local) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)


def load_into(model, directory):
    model.load_state_dict(load_sharded(model.sharded_state_dict(), directory))


def check_grads(model):
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"bad grad for {name}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters()), "all gradients are zero"


def swap_tp_shards(param):
    """Replace this rank's shard by the other TP rank's: the layout a broken converter would produce."""
    from megatron.core import parallel_state as ps

    parts = [torch.empty_like(param.data) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, param.data.contiguous(), group=ps.get_tensor_model_parallel_group())
    other = (ps.get_tensor_model_parallel_rank() + 1) % len(parts)
    param.data.copy_(parts[other])


def main():
    shared = Path(sys.argv[1])
    env = hp.init_distributed()
    world = env.world_size
    cfg = TinyGPTConfig()
    batches = [synthetic_batch(cfg, seed=i) for i in range(cfg.num_microbatches)]  # same on every rank
    layouts = [(2, 1), (1, 2)] if world == 2 else [(2, 2)]

    with hp.device_mode():
        hp.initialize_model_parallel(1, 1, seed=1234)
        reference = build_tiny_gpt(cfg)
        ref_loss = forward_backward(reference, batches, cfg, forward_only=True)
        save_sharded(reference.sharded_state_dict(), shared / "tp1")
        hp.destroy_model_parallel()
        log(f"reference TP=1 loss {ref_loss:.6f}")

        tp2_logits = None
        for tp, pp in layouts:
            hp.initialize_model_parallel(tp, pp, seed=4321)  # other seed: the weights must come from the file
            model = build_tiny_gpt(cfg)
            fresh = forward_backward(model, batches, cfg, forward_only=True)
            assert abs(fresh - ref_loss) > 1e-3, "a freshly initialised model already matches the reference"
            load_into(model, shared / "tp1")
            loss = forward_backward(model, batches, cfg)  # forward + backward
            assert abs(loss - ref_loss) < LOSS_TOL, f"TP={tp} PP={pp}: loss {loss} != TP=1 loss {ref_loss}"
            check_grads(model)
            log(f"TP={tp} PP={pp}: loss {loss:.6f} (|diff| {abs(loss - ref_loss):.2e}), grads finite")

            qkv = dict(model.named_parameters()).get("decoder.layers.0.self_attention.linear_qkv.weight")
            if tp == 2 and pp == 1:
                tp2_logits = full_logits(model, batches[0])
                save_sharded(model.sharded_state_dict(), shared / "tp2")
            if tp == 2 and qkv is not None:
                swap_tp_shards(qkv)
            wrong = forward_backward(model, batches, cfg, forward_only=True)
            if tp == 2:  # the swapped shard lives on the first stage; the loss is broadcast to all
                assert abs(wrong - ref_loss) > 100 * LOSS_TOL, (
                    f"swapped TP shards left the loss unchanged ({wrong})"
                )
                log(f"TP={tp} PP={pp}: swapped qkv shards -> loss {wrong:.6f} (differs, as it must)")
            hp.destroy_model_parallel()

        if world == 2:
            hp.initialize_model_parallel(1, 1, seed=99)
            model = build_tiny_gpt(cfg)
            load_into(model, shared / "tp2")
            diff = (full_logits(model, batches[0]) - tp2_logits).abs().max().item()
            assert diff < 1e-5, f"TP=2 checkpoint reloaded at TP=1: logits differ by {diff}"
            log(f"TP=2 checkpoint -> TP=1: max |logit diff| {diff:.2e}")
            hp.destroy_model_parallel()

        tp, pp = layouts[0] if world == 4 else (1, 1)  # DP=2 at world 2; TP=2 x PP=2 at world 4
        hp.initialize_model_parallel(tp, pp, seed=1234)
        model, optimizer = build_trainable(cfg)
        before = train_step(model, optimizer, batches, cfg)
        after = forward_backward(model, batches, cfg, forward_only=True)
        assert after < before - 1e-3, (
            f"one distributed-optimizer step did not lower the loss ({before} -> {after})"
        )
        log(
            f"DDP + distributed optimizer at TP={tp} PP={pp} DP={world // (tp * pp)}: {before:.4f} -> {after:.4f}"
        )
        hp.destroy_model_parallel()
    log("OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
