"""Benchmark (a): the policy update and the old-policy pass of a Qwen2.5-1.5B-shaped model on Megatron.

Random initialisation, local layer spec (no Transformer Engine; its core attention ``--local-attention``,
default auto = SDPA's fused kernels on CUDA, Megatron's unfused attention on CPU), one GPU, bf16 with
Megatron's bf16 optimizer, sequences of ``--seq`` tokens (response = all but the first 256). Measures
``Policy.update`` (forward, fused HAPO loss, backward, optimizer step; one optimizer step over ``--batch``
sequences in micro-batches of ``--mbs``) and ``Policy.old_policy_pass`` (forward-only scoring).

FLOPs (docs/ops.md, "Training-step FLOPs"), with T = tokens in the step, s = sequence length, L = layers,
h_att = heads x head_dim, N = matmul parameters (all parameters except the input embedding table, plus the
output layer's V_pad x d when it is tied to the embedding):

    update    = 6 N T + 12 L s h_att T      (forward 2 N + 4 L s h_att per token; backward twice that)
    old pass  = 2 N T +  4 L s h_att T

The attention term counts the full s x s products unfused attention computes (the flash kernel skips the
causal half; one formula for both). MFU = update FLOPs / time / 989 TFLOP/s (dense bf16 peak of an
H100/H200 SXM). Attention's share: one layer's core attention (QK^T, masked softmax, AV) timed alone on the
step's shapes, forward + backward, times L x micro-batches, over the update time. Both core attentions,
SDPA and unfused, are timed so on the same inputs, side by side.

``--recompute full none`` times the update once per activation-recompute setting, on policies rebuilt from
the same random weights (the old pass, attention timings and syncs come from the first); the MFU goal is
judged on the fastest. ``run_all.sh`` measures both with SDPA: full recompute is the recipes' setting,
and without it the 1.5B model at 4 x 4096 tokens needs about 37 GiB. Each update row shows the dry run's
memory plan of its layout (``config/plan.py``, of a bf16 step: weights, fp32 gradients, Adam state, one
micro-batch's activations and logits) beside the measured peak: 28.8 GiB with full recompute and 36.7 GiB
without, by the plan.

On CUDA it also counts the host syncs of one update (``torch.cuda.set_sync_debug_mode("warn")``) and names
their commonest call sites. By design building micro-batches and collecting the loss metrics make none
and the fused op's input check one per micro-batch; the count checks that on the device (not yet run).

Goal (issue 16): MFU >= 30% with the local spec.

    python benchmarks/bench_train_step.py --device cuda                     # 1.5B, s=4096, ~60-90 s on an H200
    .venv/bin/python benchmarks/bench_train_step.py --device cpu --tiny     # tiny model, proves the script (~30 s)
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from bench_common import (  # noqa: E402
    PEAK_BF16_FLOPS,
    REPO,
    goal,
    header,
    peak_mib,
    pick_device,
    qwen25_15b_config,
    sync,
    timed,
    write_config,
)

PROMPT_LEN = 256


def matmul_params(model, arch) -> int:
    """N of the FLOPs formula: parameters that take part in a matmul per token (see module doc)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.embedding.word_embeddings.weight.numel()
    tied = arch.tie_word_embeddings
    return total - emb + (emb if tied else 0)


def make_samples(n: int, seq: int, vocab: int, prompt_len: int):
    from megatron_hapo.rollout.types import RolloutSample

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=g).tolist()
        r = seq - prompt_len
        out.append(
            RolloutSample(
                prompt_index=i, sample_index=0, prompt_ids=ids[:prompt_len], response_ids=ids[prompt_len:],
                logprobs=(-torch.rand(r, generator=g) * 4).tolist(), finish_reason="length",
                weight_version="bench", temperatures=[1.0] * r,
            )
        )  # fmt: skip
    return out


def attention_seconds(policy, seq: int, mbs: int, device: str, iters: int) -> dict[str, float]:
    """Forward + backward of one layer's core attention on [s, b, heads, head_dim] inputs of the policy's
    dtype, for each local core attention ("sdpa", "unfused"), built from the policy's own config."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_hapo.models.sdpa_attention import SDPAttention

    gpt = policy.model.module
    arch = policy.arch
    dtype = next(gpt.parameters()).dtype
    q = torch.randn(seq, mbs, arch.num_attention_heads, arch.head_dim, device=device, dtype=dtype)
    kv = [
        torch.randn(seq, mbs, arch.num_kv_heads, arch.head_dim, device=device, dtype=dtype) for _ in range(2)
    ]
    q.requires_grad_(True)
    for t in kv:
        t.requires_grad_(True)
    causal = torch.ones(1, 1, seq, seq, dtype=torch.bool, device=device).triu(1)
    grad = torch.randn(seq, mbs, arch.num_attention_heads * arch.head_dim, device=device, dtype=dtype)
    kw = dict(layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    out = {}
    # unfused is given the causal mask, SDPA none (causal), as the trainer's micro-batches do
    for name, core, mask in (
        ("sdpa", SDPAttention(gpt.config, **kw), None),
        ("unfused", DotProductAttention(gpt.config, **kw), causal),
    ):
        out[name] = timed(
            lambda core=core, mask=mask: core(q, kv[0], kv[1], mask).backward(grad), device, iters
        )
    return out


def host_syncs(fn) -> tuple[int, list[tuple[str, int]]]:
    """Synchronising CUDA calls (the host waits for the device) made by one call of ``fn``, counted with
    ``torch.cuda.set_sync_debug_mode("warn")``: their number and the five commonest call sites."""
    import collections
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return len(syncs), sites.most_common(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--tiny", action="store_true", help="tiny Qwen2-family model (CPU check of the script)")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default 4096; tiny: 128)")
    ap.add_argument("--batch", type=int, help="sequences per optimizer step (default 4; tiny: 4)")
    ap.add_argument("--mbs", type=int, default=1, help="sequences per micro-batch")
    ap.add_argument("--iters", type=int, default=3, help="timed updates (after one warm-up)")
    ap.add_argument(
        "--recompute", choices=("full", "selective", "none"), nargs="+", default=["full"],
        help="model.recompute_granularity, one update row each, same weights (default full, the recipes'; "
        "its repeated forward is not counted)",
    )  # fmt: skip
    ap.add_argument(
        "--local-attention", choices=("auto", "sdpa", "unfused"), default="auto",
        help="model.local_attention of the measured policy (auto: sdpa on CUDA, unfused on CPU)",
    )  # fmt: skip
    args = ap.parse_args()
    device = pick_device(args.device)
    seq = args.seq or (128 if args.tiny else 4096)
    batch = args.batch or 4
    prompt_len = 32 if args.tiny else PROMPT_LEN
    if seq <= prompt_len or batch % args.mbs or batch % 2:
        sys.exit(
            f"--seq must exceed the prompt ({prompt_len}) and --batch an even multiple of --mbs "
            f"(got {seq}, {batch}, {args.mbs})"
        )

    import megatron_hapo.parallel as hp
    from megatron_hapo.config import load_config
    from megatron_hapo.trainer.batching import MicroBatchPlan
    from megatron_hapo.trainer.experience import Experience
    from megatron_hapo.trainer.policy import Policy

    started = time.time()
    hp.init_distributed()
    hp.initialize_model_parallel(1, 1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_step_"))
    model_dir = write_config(tmp / "model", qwen25_15b_config(args.tiny))
    dtype = "bf16" if device == "cuda" else "fp32"
    overrides = [
        f"model.hf_path={model_dir}", "model.load_weights=false", "model.layer_spec=local",
        f"model.local_attention={args.local_attention}",
        f"precision.dtype={dtype}", f"data.micro_batch_size={args.mbs}", f"data.mini_batch_size={batch // 2}",
        f"data.train_batch_size={batch // 2}", "sampling.train.n=2", "parallel.use_distributed_optimizer=false",
        "optim.lr=1e-6", f"trainer.run_dir={tmp / 'run'}",
    ]  # fmt: skip

    def build(recompute: str):
        hp.seed_model_parallel(1234)  # every setting starts from the same random weights
        cfg = load_config(
            REPO / "examples/configs/tiny_cpu.yaml",
            [*overrides, f"model.recompute_granularity={recompute}"],
            check_env=False,
        )
        return Policy(cfg, optimizer_steps=args.iters + 2)

    def planned_mib(recompute: str, attention: str) -> float:
        """The dry run's memory plan of this layout (config/plan.py: weights, gradients, optimizer state,
        activations and logits of one micro-batch), beside the measured peak."""
        from megatron_hapo.config.plan import memory_plan

        layout = [
            f"model.recompute_granularity={recompute}", f"model.local_attention={attention}",
            f"data.max_prompt_length={prompt_len}", f"rollout.max_new_tokens={seq - prompt_len}",
            "data.max_tokens_per_micro_batch=null", "data.max_tokens_per_old_micro_batch=null",
            "data.sequence_packing=none",
        ]  # fmt: skip
        cfg = load_config(REPO / "examples/configs/tiny_cpu.yaml", [*overrides, *layout], check_env=False)
        return memory_plan(cfg, arch, dp=1).total / 2**20

    with hp.device_mode():
        policy = build(args.recompute[0])
        build_s = time.time() - started
        gpt = policy.model.module
        arch = policy.arch
        attention = (
            "sdpa"
            if type(gpt.decoder.layers[0].self_attention.core_attention).__name__ == "SDPAttention"
            else "unfused"
        )
        n_mm = matmul_params(gpt, arch)
        samples = make_samples(batch, seq, arch.vocab_size, prompt_len)
        # the trainer's layout: one Experience on the device, micro-batches of --mbs full-length sequences
        exp = Experience.build(
            samples, [s.temperatures for s in samples], [1.0 if i % 2 == 0 else -1.0 for i in range(batch)],
            [i // 2 for i in range(batch)], list(range(batch)), device=hp.compute_device(),
        )  # fmt: skip
        micro = [MicroBatchPlan(tuple(range(i, i + args.mbs)), seq) for i in range(0, batch, args.mbs)]

        def old_pass():
            policy.old_policy_pass(exp, micro)

        old_s = timed(old_pass, device, args.iters)
        stats = policy.entropy_stats(exp.entropy, exp.mask)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        metrics = {}

        def update():
            metrics.update(policy.update(exp, [micro], stats, norm_len=seq))

        upd_s = timed(update, device, args.iters)
        sync(device)
        n_syncs, sync_sites = host_syncs(update) if device == "cuda" else (None, [])
        peak = peak_mib(device)
        att_s = attention_seconds(policy, seq, args.mbs, device, args.iters)
        # the other recompute settings: the update alone, on a policy rebuilt with the same weights
        updates = {args.recompute[0]: (upd_s, peak, metrics.get("optim/grad_norm", float("nan")))}
        for recompute in args.recompute[1:]:
            del policy
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            metrics = {}
            try:
                policy = build(recompute)
                secs = timed(update, device, args.iters)
                updates[recompute] = (secs, peak_mib(device), metrics.get("optim/grad_norm", float("nan")))
            except torch.OutOfMemoryError as e:  # keep what the other settings measured
                updates[recompute] = (None, None, f"out of memory: {str(e).splitlines()[0]}")

    tokens = batch * seq
    h_att = arch.num_attention_heads * arch.head_dim
    att_flops = arch.num_layers * seq * h_att
    upd_flops = tokens * (6 * n_mm + 12 * att_flops)
    old_flops = tokens * (2 * n_mm + 4 * att_flops)
    att_share = att_s[attention] * arch.num_layers * (batch // args.mbs) / upd_s
    timed_ok = {rc: u for rc, u in updates.items() if u[0] is not None}
    best = min(timed_ok, key=lambda rc: timed_ok[rc][0])
    mfu = upd_flops / timed_ok[best][0] / PEAK_BF16_FLOPS if device == "cuda" else None

    header("bench_train_step (Policy.update through the fused HAPO loss; old-policy pass)", device)
    print(
        f"# model: {'tiny ' if args.tiny else ''}Qwen2.5-1.5B shape, L={arch.num_layers} d={arch.hidden_size} "
        f"heads={arch.num_attention_heads}/{arch.num_kv_heads} V={arch.vocab_size}, N (matmul params) "
        f"{n_mm / 1e9:.3f} B, {dtype}, local spec with {attention} attention, random init; built in {build_s:.0f} s"
    )
    print(
        f"# step: {batch} sequences x {seq} tokens (prompt {prompt_len}), micro-batch {args.mbs}; median of {args.iters} after 1 warm-up"
    )
    print(
        "# FLOPs: update 6*N*T + 12*L*s*h_att*T, old pass 2*N*T + 4*L*s*h_att*T (full s x s attention); "
        "model FLOPs: recompute's second forward is not counted"
    )
    print()
    print("| pass | ms | tokens/s | TFLOP/s | MFU | peak MiB | plan MiB | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")

    def mfu_of(secs: float) -> str:
        return f"{100 * upd_flops / secs / PEAK_BF16_FLOPS:.1f}%" if device == "cuda" else "n/a (CPU)"

    for recompute, (secs, peak_r, grad_norm) in updates.items():
        plan = f"{planned_mib(recompute, attention):.0f}"  # of a bf16 step (the CPU runs fp32)
        if secs is None:
            print(f"| update, recompute {recompute} | - | - | - | - | - | {plan} | {grad_norm} |")
            continue
        share = f"attention {100 * att_share:.0f}% of the time; " if recompute == args.recompute[0] else ""
        print(
            f"| update, recompute {recompute} | {secs * 1e3:.0f} | {tokens / secs:,.0f} | "
            f"{upd_flops / secs / 1e12:.1f} | {mfu_of(secs)} | {peak_r:.0f} | {plan} | "
            f"{share}grad_norm {grad_norm:.3g} |"
        )
    mfu_txt = f"{mfu_of(timed_ok[best][0])} (recompute {best})"
    old_mfu = f"{100 * old_flops / old_s / PEAK_BF16_FLOPS:.1f}%" if device == "cuda" else "n/a (CPU)"
    print(
        f"| old-policy pass | {old_s * 1e3:.0f} | {tokens / old_s:,.0f} | {old_flops / old_s / 1e12:.1f} | {old_mfu} | - | - | forward only |"
    )
    print()
    print("| core attention alone (one layer, forward + backward, the step's shapes) | ms | x SDPA |")
    print("|---|---:|---:|")
    for name, secs in att_s.items():
        used = " (the update's)" if name == attention else ""
        print(f"| {name}{used} | {secs * 1e3:.2f} | {secs / att_s['sdpa']:.2f} |")
    if n_syncs is not None:
        sites = ", ".join(f"{site} x{n}" for site, n in sync_sites) or "none"
        print(
            f"\n# host syncs in one update ({batch // args.mbs} micro-batches; optimizer step included): "
            f"{n_syncs}; commonest call sites: {sites}"
        )
    print()
    print(
        goal(
            None if mfu is None else mfu >= 0.30,
            f"MFU >= 30% with the local spec ({attention} attention): {mfu_txt}",
        )
    )
    print(f"# total {time.time() - started:.0f} s")
    hp.destroy_model_parallel()
    torch.distributed.destroy_process_group()  # NCCL's own teardown at exit can hang


if __name__ == "__main__":
    main()
