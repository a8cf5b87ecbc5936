"""Dry-run plan of a recipe on a declared cluster: layout, memory per training GPU, tokens per step.

``hapo-train --config RECIPE --dry-run cluster.nodes=N cluster.gpus_per_node=G`` validates the config
against that world size (no GPU needed) and prints this plan. The memory estimate is arithmetic, not a
measurement; it is meant to catch layouts that cannot fit, and every term is printed so it can be
checked. Terms per training GPU (bf16 training, fp32 master weights, Adam):

* weights: 2 B x params on the most loaded pipeline stage / TP
* gradients: 4 B x the same params (Megatron's fp32 grad buffer, ``grad_reduce_in_fp32``)
* optimizer: 12 B x the same params (fp32 master + exp_avg + exp_avg_sq), / DP with the distributed optimizer
* activations of the largest update micro-batch the layout allows, T tokens: full recompute keeps each
  layer's input (2 T h, / TP under sequence parallelism) plus one layer being recomputed; no recompute
  keeps every layer; selective recompute keeps every layer without the core attention's own tensors, plus
  the s^2 terms of the one layer being recomputed. T is micro_batch_size x S (S = prompt + response,
  padded), or the token budget ``data.max_tokens_per_micro_batch`` when one is set. What one layer keeps
  per token (:func:`layer_activations`; bf16, n query heads and g KV heads of d dims, q = n d, kv = g d, F
  the MLP's width) is what its modules save for the backward, measured on the real Megatron layer
  (``models/activation_memory.py``, ``tests/models/test_activation_memory.py``): norms 2 (2h + 4) (input
  and 1/rms, as CUDA's and TE's fused RMSNorm keep them; Qwen3's q/k norms 2q + 4n + 2kv + 4g more);
  attention 2h (linear_qkv's input) + 8d (the rotary tables) + the core attention's q, k, v, output and
  softmax statistics, 4q + 4kv + 4n (SDPA on packed rows 8q + 4n: K and V repeated to the query heads;
  TE's not measured here); MLP 2h + 6F (fc1's input, SwiGLU's input and fc2's input; a mixture of experts
  2h + k (2h + 6F_e + 56) for k experts per token). The h terms are divided by TP under sequence
  parallelism, the others by TP (measured at TP = 1 only). For Qwen2.5-Math-1.5B that is 74 KB per token
  and layer, 48 h (79 KB with SDPA on packed rows; Korthikanti et al.'s 34 h is GPT's 4h GeLU MLP with
  dropout). Transformer Engine's fused attention and the local spec's SDPA attention
  (``model.local_attention``) keep no score matrix; SDPA on a packed row keeps its mask as a bf16 bias, 2
  s^2 bytes per layer. Megatron's unfused attention keeps 6 n s^2 / TP bytes per row of length s and
  layer (the softmax in fp32 and its bf16 copy) and, for one-sequence rows, a causal mask of s^2 bools
  per layer: summed over the micro-batch's rows that is T x S under a token budget and T^2 for a packed
  row. The first pipeline stage holds up to min(PP, micro-batches) micro-batches in flight, about
  PP (1 + 1/VP) under an interleaved pipeline (:func:`pipeline_in_flight`).
* logits and their gradient: 2 x 2 B x T x V / TP (the fused log-prob/entropy op adds O(T) only)
* context parallelism (CP > 1) divides the tokens of every activation and logits term, and a packed row's
  mask, by CP (a CP rank holds s / CP tokens of each sequence or row) and adds the whole sequence's K and
  V per layer as the attention saves them (the all-gather of ``models/context_parallel.py``): 4 B x T x g d
  / TP with SDPA on causal rows (the flash kernel takes the KV heads grouped), 4 B x T x n d / TP where they
  are repeated to the query heads (SDPA on packed rows; TE's, not measured here); the distributed optimizer
  shards over DP x CP
* the old-policy pass, forward only, on micro-batches of its own budget T_old
  (``data.max_tokens_per_old_micro_batch``): one layer's working set at a time (the same per-layer terms
  at T_old) plus its bf16 logits, 2 B x T_old x V / TP. It runs before the update, so the total counts
  the larger of the two.

The layer spec is the config's; ``layer_spec: auto`` is planned as Transformer Engine's (what a GPU
cluster has) unless ``data.sequence_packing: mask`` needs the local one, and the packing route follows
from it as at run time (``models/packing.py``). ``local_attention: auto`` is planned as SDPA (what it
resolves to on CUDA).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from megatron_hapo.config.errors import HapoError
from megatron_hapo.config.model_info import padded_vocab_size
from megatron_hapo.config.schema import RootConfig
from megatron_hapo.config.validate import ENV_CHECKS, data_parallel_size

GiB = 1024**3


class PlanError(HapoError, ValueError):
    """The dry run cannot plan the run (unknown model) or the plan does not fit (the message holds the plan)."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per training GPU. The update (activations + logits) and the old-policy pass (``old_pass``)
    run one after the other, so the peak holds the larger of the two on top of the resident state."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float
    old_pass: float
    layer_per_token: LayerActivations  # what one layer keeps per token of the update micro-batch

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + max(self.activations + self.logits, self.old_pass)


def model_arch(cfg: RootConfig):
    from megatron_hapo.models.hf_config import load_arch
    from megatron_hapo.models.known_configs import known_config

    path = Path(cfg.model.hf_path).expanduser()
    if (path / "config.json").is_file():
        raw = json.loads((path / "config.json").read_text())
    else:
        raw = known_config(cfg.model.hf_path)
        if raw is None:
            raise PlanError(
                f"model.hf_path={cfg.model.hf_path!r} is neither a local model directory nor a model the dry run "
                "knows (megatron_hapo/models/known_configs.py); point it at a directory holding config.json"
            )
    raw.update(cfg.model.override_config)
    return load_arch(raw)


def param_counts(arch) -> tuple[int, int, int]:
    """(params of one transformer layer, input embedding, output layer incl. final norm)."""
    h, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_kv_heads * d
    attn = (
        h * q + 2 * h * kv + q * h + ((q + 2 * kv) if arch.qkv_bias else 0) + (2 * d if arch.qk_norm else 0)
    )
    layer = attn + mlp_params(arch) + 2 * h
    embed = arch.vocab_size * h
    return layer, embed, (0 if arch.tie_word_embeddings else embed) + h


def mlp_params(arch, active: bool = False) -> int:
    """One layer's MLP: SwiGLU's 3 h x ffn matrices; a mixture of experts has ``num_experts`` of them and the
    router (h x experts), of which a token uses ``top_k`` (``active``)."""
    h, moe = arch.hidden_size, arch.moe
    if moe is None:
        return 3 * h * arch.ffn_hidden_size
    return (moe.top_k if active else moe.num_experts) * expert_params(arch) + h * moe.num_experts


def expert_params(arch) -> int:
    """One expert of a mixture of experts: its SwiGLU's 3 h x expert ffn matrices."""
    return 3 * arch.hidden_size * arch.moe.expert_ffn_hidden_size


@dataclass(frozen=True)
class MicroBatchShape:
    """The largest micro-batch of the update (or of the old-policy pass) the layout allows: ``tokens`` in
    all, ``score_pairs`` = the sum over its rows of s^2 (what unfused attention holds per head and layer),
    the attention that computes it ("te", "sdpa" or "unfused"), whether it is a packed row, and how it is
    laid out."""

    tokens: int
    score_pairs: int
    attention: str
    packed: bool
    describe: str

    def attention_bytes_per_layer(self, heads: int, tp: int) -> float:
        """What the layer's attention keeps for the backward besides its inputs (module docstring)."""
        if self.attention == "unfused":  # fp32 softmax and its bf16 copy per head; a causal mask per layer
            return 6 * heads * self.score_pairs / tp + (0 if self.packed else self.score_pairs)
        if self.attention == "sdpa" and self.packed:
            return 2 * self.score_pairs
        return 0


# what a mixture of experts' router and token dispatcher keep per expert choice of a token: int64 indices and
# fp32 probabilities (measured, tests/models/test_activation_memory.py)
MOE_ROUTING_BYTES = 56


@dataclass(frozen=True)
class LayerActivations:
    """Bytes one transformer layer keeps for the backward per token of a micro-batch, by part (bf16; the
    module docstring gives the terms). The s^2 terms of attention are :class:`MicroBatchShape`'s."""

    norms: float  # the RMSNorms' inputs and 1/rms
    attention: float  # linear_qkv's input, rotary tables, the core attention's q, k, v, output, statistics
    mlp: float  # fc1's input, SwiGLU's input, fc2's input (per expert choice for a mixture of experts)

    @property
    def total(self) -> float:
        return self.norms + self.attention + self.mlp


def layer_activations(
    arch,
    attention: str,
    tp: int = 1,
    sequence_parallel: bool = False,
    masked: bool = False,
    recompute_core_attention: bool = False,
) -> LayerActivations:
    """What one layer keeps per token on one TP rank, for the core attention ``attention`` ("sdpa",
    "unfused" or "te"). Tensors of the hidden size are sharded over TP only under sequence parallelism.
    ``masked``: the attention takes an explicit mask (packed rows), with which SDPA repeats K and V to the
    query heads (models/sdpa_attention.py). ``recompute_core_attention``
    (``recompute_granularity: selective``): Megatron's checkpoint keeps the core attention's inputs, q, k
    and V's view of linear_qkv's output (which keeps that whole output alive), and linear_proj keeps its
    input; the core attention's own tensors (and the s^2 terms) are recomputed in the backward."""
    h, n, g, d = arch.hidden_size, arch.num_attention_heads, arch.num_kv_heads, arch.head_dim
    q, kv = n * d, g * d
    sp = tp if sequence_parallel else 1
    norms = 2 * (2 * h + 4) / sp + ((2 * q + 4 * n + 2 * kv + 4 * g) / tp if arch.qk_norm else 0)
    if recompute_core_attention:
        core = 2 * q + 2 * kv + 2 * (q + 2 * kv) + 2 * q
    elif attention == "te" or (attention == "sdpa" and (n == g or not masked)):
        # K and V at their own heads (SDPA: the flash kernel's grouped-query attention; V copied out of
        # linear_qkv's output, models/sdpa_attention.py)
        core = 4 * q + 4 * kv + 4 * n
    else:
        # K and V repeated to the query heads are copies; without grouping, V in Megatron's
        # DotProductAttention is a view that keeps the whole linear_qkv output alive
        k_v = 4 * q if n > g else 2 * kv + 2 * (q + 2 * kv)
        # SDPA: q, k, v, its output (linear_proj's input) and the log-sum-exp; unfused: q, k, v and
        # linear_proj's input, a copy (the scores are MicroBatchShape's)
        core = 2 * q + k_v + 2 * q + (4 * n if attention == "sdpa" else 0)
    if arch.moe is None:
        mlp = 2 * h / sp + 6 * arch.ffn_hidden_size / tp
    else:  # every expert choice gets its copy of the token on the rank of its expert
        k, f = arch.moe.top_k, arch.moe.expert_ffn_hidden_size
        mlp = 2 * h / sp + k * (2 * h + 6 * f / tp + MOE_ROUTING_BYTES)
    return LayerActivations(norms=norms, attention=2 * h / sp + 8 * d + core / tp, mlp=mlp)


ATTENTION_NAMES = {
    "te": "TE fused attention",
    "sdpa": "local spec, SDPA attention",
    "unfused": "local spec, unfused attention",
}


def micro_batch_shape(cfg: RootConfig, old_pass: bool = False) -> MicroBatchShape:
    from megatron_hapo.models.packing import resolve_packing  # torch: only for a plan, not for a config

    d, m = cfg.data, cfg.parallel.sequence_multiple
    seq = -(-(d.max_prompt_length + cfg.rollout.max_new_tokens) // m) * m
    # layer_spec auto: TE's, as on a GPU cluster, unless the packing asked for is the local spec's (mask)
    te = cfg.model.layer_spec == "te" or (cfg.model.layer_spec == "auto" and d.sequence_packing != "mask")
    budget = d.max_tokens_per_micro_batch
    route, _ = resolve_packing(d.sequence_packing, te, budget is not None, cfg.parallel.context_parallel_size)
    if old_pass and budget is not None:
        budget = d.max_tokens_per_old_micro_batch or budget
    attention = "te" if te else ("sdpa" if cfg.model.local_attention == "auto" else cfg.model.local_attention)
    spec = ATTENTION_NAMES[attention]
    if budget is None:
        rows = d.micro_batch_size
        return MicroBatchShape(
            rows * seq, rows * seq * seq, attention, False, f"micro-batch {rows} x {seq} tokens, {spec}"
        )
    if route != "none":
        return MicroBatchShape(
            budget, budget * budget, attention, True, f"packed rows of {budget} tokens ({route}), {spec}"
        )
    # rows x padded length <= budget: the score pairs peak with rows of the longest sequence
    return MicroBatchShape(
        budget, budget * seq, attention, False, f"token budget {budget} (rows up to {seq}), {spec}"
    )


def pipeline_in_flight(pp: int, vp: int | None, micro_batches: int) -> float:
    """Micro-batches whose activations the first pipeline stage holds at once, in whole-stage units.

    Plain 1F1B: min(PP, M). Interleaved (VP chunks of 1/VP of the stage's layers each; M rounded up to a
    multiple of PP): the first rank runs 2 (PP - 1) + (VP - 1) PP warm-up chunk forwards before its first
    backward, all M x VP when M = PP (Megatron's ``get_pp_rank_microbatches``), so about PP (1 + 1/VP)."""
    m = max(1, micro_batches)
    if pp == 1:
        return 1
    if not vp:
        return min(pp, m)
    m = -(-m // pp) * pp
    chunk_forwards = m * vp if m == pp else min(m * vp, 2 * (pp - 1) + (vp - 1) * pp + 1)
    return chunk_forwards / vp


def memory_plan(cfg: RootConfig, arch, dp: int) -> MemoryPlan:
    p, data = cfg.parallel, cfg.data
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    layer, embed, head = param_counts(arch)
    per_stage_layers = -(-arch.num_layers // pp)

    def stage_params(layer: float) -> float:
        # the most loaded stage: first (embedding) or last (output layer; a tied model keeps a copy there too)
        first = per_stage_layers * layer + embed
        last = per_stage_layers * layer + (head if not arch.tie_word_embeddings or pp == 1 else head + embed)
        return (max(first, last) if pp > 1 else arch.num_layers * layer + embed + head) / tp

    # expert parallelism: a rank holds 1/EP of a layer's experts; its distributed optimizer shards them over the
    # DP x CP / EP ranks holding the same experts, so the optimizer's share per rank is as without EP
    ep = p.expert_model_parallel_size
    experts = arch.moe.num_experts * expert_params(arch) if arch.moe else 0
    stage, held = stage_params(layer), stage_params(layer - experts * (ep - 1) / ep)
    h, sp, cp = arch.hidden_size, (tp if p.sequence_parallel else 1), p.context_parallel_size
    q_dim = arch.num_attention_heads * arch.head_dim
    update, old = micro_batch_shape(cfg), micro_batch_shape(cfg, old_pass=True)
    masked = update.packed
    per_token = layer_activations(arch, update.attention, tp, p.sequence_parallel, masked)

    def attention_squares(mb: MicroBatchShape) -> float:
        # a CP rank holds T / CP tokens (and query rows of a packed row's mask), and the whole sequence's K
        # and V (bf16) as the attention saves them: SDPA on causal rows at the KV heads, else repeated to the
        # query heads (models/sdpa_attention.py, bench_context_parallel.py)
        grouped = mb.attention == "sdpa" and not mb.packed
        kv_dim = arch.num_kv_heads * arch.head_dim if grouped else q_dim
        gathered_kv = 2 * 2 * mb.tokens * kv_dim / tp if cp > 1 else 0
        return mb.attention_bytes_per_layer(arch.num_attention_heads, tp) / cp + gathered_kv

    def layer_working_set(mb: MicroBatchShape) -> float:
        return per_token.total * mb.tokens / cp + attention_squares(mb)

    recompute = cfg.model.recompute_granularity
    # what a layer keeps for the backward (selective recompute: the core attention's inputs only)
    kept = (
        layer_activations(
            arch, update.attention, tp, p.sequence_parallel, masked, recompute_core_attention=True
        )
        if recompute == "selective"
        else per_token
    )
    if recompute == "full":  # every layer's input, and one layer recomputed at a time
        per_mb = per_stage_layers * 2 * update.tokens / cp * h / sp + layer_working_set(update)
    elif recompute == "selective":  # the attention's s^2 terms of the one layer being recomputed
        per_mb = per_stage_layers * kept.total * update.tokens / cp + attention_squares(update)
    else:
        per_mb = per_stage_layers * layer_working_set(update)
    responses_per_rank = data.mini_batch_size * cfg.sampling.train.n // dp
    # a token budget may give every response a micro-batch of its own
    micro_batches = (
        responses_per_rank if data.max_tokens_per_micro_batch else responses_per_rank // data.micro_batch_size
    )
    in_flight = pipeline_in_flight(pp, p.virtual_pipeline_model_parallel_size, micro_batches)
    return MemoryPlan(
        weights=2 * held,
        grads=4 * held,
        optimizer=12 * stage / (dp * cp if p.use_distributed_optimizer else 1),  # sharded over DP x CP
        activations=per_mb * in_flight,
        logits=2 * 2 * update.tokens / cp * arch.vocab_size / tp,
        old_pass=layer_working_set(old) + 2 * old.tokens / cp * arch.vocab_size / tp,
        layer_per_token=kept,
    )


def largest_budget(cfg: RootConfig, arch, dp: int, limit: float, key: str) -> int:
    """The largest value of the token budget ``data.<key>`` (a multiple of the sequence multiple, at most 64 x
    the configured one) whose memory plan stays within ``limit`` bytes, the other settings as they are."""
    m, start = cfg.parallel.sequence_multiple, getattr(cfg.data, key)

    def fits(tokens: int) -> bool:
        data = dataclasses.replace(cfg.data, **{key: tokens})
        return memory_plan(dataclasses.replace(cfg, data=data), arch, dp).total <= limit

    lo, hi = start // m, 64 * start // m  # the plan grows with the budget: bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * m) else (lo, mid - 1)
    return lo * m


def routing_replay_volume(cfg: RootConfig, arch, tokens: int) -> str:
    """The step line's note on routing replay's data: every token carries its experts in every layer (uint8 ids,
    int16 past 256 experts); the lead holds the step's, and each rank receives its data-parallel rank's share."""
    if not cfg.algorithm.rollout_routing_replay or arch.moe is None:
        return ""
    per_token = arch.num_layers * arch.moe.top_k * (1 if arch.moe.num_experts <= 256 else 2)
    return (
        f"; routing replay: {per_token} B/token, up to {per_token * tokens / 1e9:.1f} GB of routed experts "
        "per step on the lead (each rank receives 1/DP)"
    )


def render_plan(cfg: RootConfig, world_size: int, gpu_gib: float = 80.0) -> str:
    """The dry-run report; raises PlanError when the estimate exceeds ``gpu_gib``."""
    arch = model_arch(cfg)
    p, r, data, n = cfg.parallel, cfg.rollout, cfg.data, cfg.sampling.train.n
    dp = data_parallel_size(cfg, world_size)
    layer, embed, head = param_counts(arch)
    total_params = arch.num_layers * layer + embed + head
    if arch.moe is not None:
        active = total_params - arch.num_layers * (mlp_params(arch) - mlp_params(arch, active=True))
    mem, shape = memory_plan(cfg, arch, dp), micro_batch_shape(cfg)
    gpus_per_server = r.gpus_per_server or r.tensor_parallel_size
    seq = data.max_prompt_length + r.max_new_tokens
    lines = [
        f"model      {cfg.model.hf_path}: {arch.family}, {total_params / 1e9:.2f} B params"
        + (
            f" ({active / 1e9:.2f} B active: {arch.moe.top_k} of {arch.moe.num_experts} experts per token)"
            if arch.moe
            else ""
        )
        + f", {arch.num_layers} layers, "
        f"hidden {arch.hidden_size}, {arch.num_attention_heads} heads / {arch.num_kv_heads} KV, vocab {arch.vocab_size} "
        f"(padded to {padded_vocab_size(arch.vocab_size, p.tensor_model_parallel_size, cfg.model.make_vocab_size_divisible_by)}"
        f" = a multiple of {cfg.model.make_vocab_size_divisible_by} x TP), context {arch.max_position_embeddings}",
        f"training   {world_size} GPUs = TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size} "
        f"x CP {p.context_parallel_size} x DP {dp}"
        + (
            f" + interleaved pipeline (VP {p.virtual_pipeline_model_parallel_size} chunks per stage)"
            if p.virtual_pipeline_model_parallel_size
            else ""
        )
        + (" + sequence parallel" if p.sequence_parallel else "")
        + (
            f" + expert parallel (EP {p.expert_model_parallel_size})"
            if p.expert_model_parallel_size > 1
            else ""
        )
        + (" + distributed optimizer" if p.use_distributed_optimizer else ""),
        f"rollout    {r.engine}: {r.num_servers} SGLang server(s) x {gpus_per_server} GPU(s), TP {r.tensor_parallel_size}",
        f"step       {data.train_batch_size} prompts x {n} = {data.train_batch_size * n} responses, "
        f"{data.train_batch_size // data.mini_batch_size} optimizer updates; up to "
        f"{data.train_batch_size * n * seq / 1e6:.1f} M tokens (prompt {data.max_prompt_length} + response {r.max_new_tokens})"
        + routing_replay_volume(cfg, arch, data.train_batch_size * n * seq),
        f"memory per training GPU (estimate, {shape.describe}, recompute {cfg.model.recompute_granularity}):",
    ]
    layer = mem.layer_per_token
    notes = {
        "activations": f"per layer and token: norms {layer.norms / 1e3:.1f} KB, attention {layer.attention / 1e3:.1f} "
        f"KB, MLP {layer.mlp / 1e3:.1f} KB"
    }
    for name in ("weights", "grads", "optimizer", "activations", "logits"):
        note = f" ({notes[name]})" if name in notes else ""
        lines.append(f"  {name:<12} {getattr(mem, name) / GiB:8.2f} GiB{note}")
    lines.append(
        f"  {'old pass':<12} {mem.old_pass / GiB:8.2f} GiB (forward only, {micro_batch_shape(cfg, old_pass=True).describe}; "
        "the total takes the larger of it and activations + logits)"
    )
    if cfg.model.recompute_granularity == "selective" and shape.attention != "unfused":
        # Megatron's selective recompute is the core attention's: it drops the unfused attention's scores,
        # and SDPA and TE keep none (docs/training.md, "What a layer keeps for the backward")
        plain = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, recompute_granularity="none"))
        lines.append(
            f"  note: selective recompute keeps {mem.activations / GiB:.2f} GiB of activations against "
            f"{memory_plan(plain, arch, dp).activations / GiB:.2f} GiB without recompute: it recomputes the "
            f"core attention, which with {ATTENTION_NAMES[shape.attention]} keeps no scores to drop; "
            "use model.recompute_granularity=none or full"
        )
    engine = r.mem_fraction * gpu_gib * GiB if r.engine == "inprocess" else 0.0
    if engine:  # the in-process engine's share of the GPUs it shares with training ranks
        lines.append(f"  {'rollout':<12} {engine / GiB:8.2f} GiB (in-process engine, rollout.mem_fraction)")
    lines.append(f"  {'total':<12} {(mem.total + engine) / GiB:8.2f} GiB of {gpu_gib:.0f} GiB")
    budgets = [
        k for k in ("max_tokens_per_micro_batch", "max_tokens_per_old_micro_batch") if getattr(data, k)
    ]
    if budgets and (mem.total + engine) / GiB <= gpu_gib:  # fewer, fuller micro-batches (docs/training.md)
        grown = [
            f"data.{k} up to {largest_budget(cfg, arch, dp, gpu_gib * GiB - engine, k)} (now {getattr(data, k)})"
            for k in budgets
        ]
        lines.append(f"headroom   by this estimate, each alone within {gpu_gib:.0f} GiB: " + ", ".join(grown))
    lines.append(
        "checked    layout vs the cluster, batch sizes, heads / KV heads / MLP vs TP and rollout TP, layers vs PP "
        "(x VP), CP vs attention, packing and loss, "
        "prompt + response vs the context, vocabulary padding"
    )
    lines.append("skipped    (need the machine the run starts on): " + "; ".join(ENV_CHECKS))
    report = "\n".join(lines)
    if (mem.total + engine) / GiB > gpu_gib:
        fixes = ["raise TP/PP, recompute or DP"]
        if data.max_tokens_per_micro_batch is not None:
            budget = (
                "data.max_tokens_per_old_micro_batch"
                if mem.old_pass > mem.activations + mem.logits
                else "data.max_tokens_per_micro_batch"
            )
            fixes.append(f"lower {budget}")
        if micro_batch_shape(cfg).attention == "unfused":
            fixes.append(
                "use a fused attention, which keeps no scores: model.local_attention=sdpa (or auto), or TE's (model.layer_spec=te)"
            )
        if engine:
            fixes.append(
                "give the rollout GPUs of its own: rollout.engine=fleet (docs/rollout.md), the in-process "
                "engine is for development and small models"
            )
        raise PlanError(f"{report}\nthe estimate exceeds {gpu_gib:.0f} GiB per GPU: " + "; or ".join(fixes))
    return report


def dry_run(path: str, overrides: list[str] = ()) -> str:
    """Validate ``path`` + ``overrides`` against ``cluster.nodes x cluster.gpus_per_node`` (no GPU, no
    model files needed) and return the plan. Raises ``ConfigError``/``PlanError`` naming the problem.

    The rules are the real run's (``config/validate.py``), model fit included (from the local config.json
    or ``models/known_configs.py``); the machine-dependent ones (``ENV_CHECKS``) are listed as skipped."""
    from megatron_hapo.config import load_config

    cfg = load_config(path, list(overrides), check_env=False)
    world = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    load_config(path, list(overrides), world_size=world, check_env=False)  # layout vs the declared cluster
    return render_plan(cfg, world)
