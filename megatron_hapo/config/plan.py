"""Dry-run plan of a recipe on a declared cluster: layout, memory per training GPU, tokens per step.

``hapo-train --config RECIPE --dry-run cluster.nodes=N cluster.gpus_per_node=G`` validates the config
against that world size (no GPU needed) and prints this plan. The memory estimate is arithmetic, not a
measurement; it is meant to catch layouts that cannot fit, and every term is printed so it can be
checked. Terms per training GPU (bf16 training, fp32 master weights, Adam):

* weights: 2 B x params on the most loaded pipeline stage / TP
* gradients: 4 B x the same params (Megatron's fp32 grad buffer, ``grad_reduce_in_fp32``)
* optimizer: 12 B x the same params (fp32 master + exp_avg + exp_avg_sq), / DP with the distributed optimizer
* activations of one micro-batch of S = prompt + response tokens (flash attention, so no S^2 term;
  Korthikanti et al. 2022): full recompute keeps each layer's input (2 S h B, / TP under sequence
  parallelism) plus one layer being recomputed (34 S h B / TP); no/selective recompute keeps 34 S h / TP per
  layer. The first pipeline stage holds up to min(PP, micro-batches) micro-batches in flight.
* logits and their gradient: 2 x 2 B x S x V / TP (the fused log-prob/entropy op adds O(S) only)
"""

from __future__ import annotations

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
    weights: float
    grads: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits


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
    layer = attn + 3 * h * arch.ffn_hidden_size + 2 * h
    embed = arch.vocab_size * h
    return layer, embed, (0 if arch.tie_word_embeddings else embed) + h


def memory_plan(cfg: RootConfig, arch, dp: int) -> MemoryPlan:
    p, data = cfg.parallel, cfg.data
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    layer, embed, head = param_counts(arch)
    per_stage_layers = -(-arch.num_layers // pp)
    # the most loaded stage: first (embedding) or last (output layer; a tied model keeps a copy there too)
    first = per_stage_layers * layer + embed
    last = per_stage_layers * layer + (head if not arch.tie_word_embeddings or pp == 1 else head + embed)
    stage = (max(first, last) if pp > 1 else arch.num_layers * layer + embed + head) / tp
    seq = data.max_prompt_length + cfg.rollout.max_new_tokens
    b, h = data.micro_batch_size, arch.hidden_size
    sp = tp if p.sequence_parallel else 1
    if cfg.model.recompute_granularity == "full":
        per_mb = per_stage_layers * 2 * seq * h * b / sp + 34 * seq * h * b / tp
    else:
        per_mb = per_stage_layers * 34 * seq * h * b / tp
    responses_per_rank = data.mini_batch_size * cfg.sampling.train.n // dp
    in_flight = min(pp, max(1, responses_per_rank // b)) if pp > 1 else 1
    return MemoryPlan(
        weights=2 * stage,
        grads=4 * stage,
        optimizer=12 * stage / (dp if p.use_distributed_optimizer else 1),
        activations=per_mb * in_flight,
        logits=2 * 2 * seq * b * arch.vocab_size / tp,
    )


def render_plan(cfg: RootConfig, world_size: int, gpu_gib: float = 80.0) -> str:
    """The dry-run report; raises PlanError when the estimate exceeds ``gpu_gib``."""
    arch = model_arch(cfg)
    p, r, data, n = cfg.parallel, cfg.rollout, cfg.data, cfg.sampling.train.n
    dp = data_parallel_size(cfg, world_size)
    layer, embed, head = param_counts(arch)
    total_params = arch.num_layers * layer + embed + head
    mem = memory_plan(cfg, arch, dp)
    gpus_per_server = r.gpus_per_server or r.tensor_parallel_size
    seq = data.max_prompt_length + r.max_new_tokens
    lines = [
        f"model      {cfg.model.hf_path}: {arch.family}, {total_params / 1e9:.2f} B params, {arch.num_layers} layers, "
        f"hidden {arch.hidden_size}, {arch.num_attention_heads} heads / {arch.num_kv_heads} KV, vocab {arch.vocab_size} "
        f"(padded to {padded_vocab_size(arch.vocab_size, p.tensor_model_parallel_size, cfg.model.make_vocab_size_divisible_by)}"
        f" = a multiple of {cfg.model.make_vocab_size_divisible_by} x TP), context {arch.max_position_embeddings}",
        f"training   {world_size} GPUs = TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size} "
        f"x CP {p.context_parallel_size} x DP {dp}"
        + (" + sequence parallel" if p.sequence_parallel else "")
        + (" + distributed optimizer" if p.use_distributed_optimizer else ""),
        f"rollout    {r.engine}: {r.num_servers} SGLang server(s) x {gpus_per_server} GPU(s), TP {r.tensor_parallel_size}",
        f"step       {data.train_batch_size} prompts x {n} = {data.train_batch_size * n} responses, "
        f"{data.train_batch_size // data.mini_batch_size} optimizer updates; up to "
        f"{data.train_batch_size * n * seq / 1e6:.1f} M tokens (prompt {data.max_prompt_length} + response {r.max_new_tokens})",
        f"memory per training GPU (estimate, micro-batch {data.micro_batch_size} x {seq} tokens, "
        f"recompute {cfg.model.recompute_granularity}):",
    ]
    for name in ("weights", "grads", "optimizer", "activations", "logits"):
        lines.append(f"  {name:<12} {getattr(mem, name) / GiB:8.2f} GiB")
    engine = r.mem_fraction * gpu_gib * GiB if r.engine == "inprocess" else 0.0
    if engine:  # the in-process engine's share of the GPUs it shares with training ranks
        lines.append(f"  {'rollout':<12} {engine / GiB:8.2f} GiB (in-process engine, rollout.mem_fraction)")
    lines.append(f"  {'total':<12} {(mem.total + engine) / GiB:8.2f} GiB of {gpu_gib:.0f} GiB")
    lines.append(
        "checked    layout vs the cluster, batch sizes, heads / KV heads / MLP vs TP and rollout TP, layers vs PP x VPP, "
        "prompt + response vs the context, vocabulary padding"
    )
    lines.append("skipped    (need the machine the run starts on): " + "; ".join(ENV_CHECKS))
    report = "\n".join(lines)
    if (mem.total + engine) / GiB > gpu_gib:
        fix = (
            "; or give the rollout GPUs of its own: rollout.engine=fleet (docs/rollout.md), the in-process "
            "engine is for development and small models"
            if engine
            else ""
        )
        raise PlanError(
            f"{report}\nthe estimate exceeds {gpu_gib:.0f} GiB per GPU: raise TP/PP, recompute or DP{fix}"
        )
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
