"""Cross-field rules of a loaded config; every violation is reported at once.

Pure rules (layout, batch sizes, value ranges) always run, and so do the model-fit rules (heads, KV
heads and MLP size divisible by TP, layers by PP, prompt + response within the context) whenever
the model's config.json is local or the model is in ``models/known_configs.py``. With
``check_env=True`` the rules that look at the machine and the file system run too (``ENV_CHECKS``):
FP8 needs Transformer Engine and an FP8-capable GPU, the TE layer spec needs TE, data/benchmark/model/
checkpoint paths must exist. Each issue names its key(s) and the file or override that set them.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from megatron_hapo.config.environment import EnvProbe
from megatron_hapo.config.errors import ConfigError, ConfigIssue
from megatron_hapo.config.loader import source_of
from megatron_hapo.config.model_info import (
    ModelShape,
    find_config_json,
    known_model_shape,
    looks_like_hub_id,
    pp_problems,
    read_model_shape,
    rollout_tp_problems,
    tp_problems,
)
from megatron_hapo.config.schema import RootConfig

logger = logging.getLogger(__name__)

# FP8 GEMMs need Ada/Hopper (sm89+); TE's blockwise recipe needs Hopper (sm90) and CUDA >= 12.9.
_FP8_MIN_CAPABILITY = {"delayed": (8, 9), "tensorwise": (8, 9), "blockwise": (9, 0)}
_BLOCKWISE_MIN_CUDA = (12, 9)


class _Issues:
    """Collects issues, attributing each to the file(s)/override(s) that set its keys."""

    def __init__(self, origins: Mapping[str, str]):
        self.origins = origins
        self.items: list[ConfigIssue] = []

    def add(self, keys: str | Sequence[str], message: str, source: str | None = None) -> None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        if source is None:
            # "data.train_files[1]" was set where "data.train_files" was.
            sources = list(dict.fromkeys(source_of(self.origins, re.sub(r"\[\d+\]", "", k)) for k in keys))
            source = "; ".join(sources)
        self.items.append(ConfigIssue(", ".join(keys), message, source))


def world_size_of(cfg: RootConfig, world_size: int | None) -> tuple[int, str]:
    """The world size to validate against and a phrase saying where it came from."""
    if world_size is not None:
        return world_size, f"world size {world_size}"
    n = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    return n, f"world size {n} (cluster.nodes x cluster.gpus_per_node; pass the real one at launch)"


def data_parallel_size(cfg: RootConfig, world_size: int) -> int | None:
    """DP: the configured value, else world / (TP x PP x CP) when that divides; None if it does not."""
    p = cfg.parallel
    if p.data_parallel_size is not None:
        return p.data_parallel_size
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    if model_parallel <= 0 or world_size % model_parallel:
        return None
    return world_size // model_parallel


# --------------------------------------------------------------------------------------------- rules


def _positive(cfg: RootConfig, out: _Issues) -> None:
    checks = {
        "parallel.tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
        "parallel.pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size,
        "parallel.context_parallel_size": cfg.parallel.context_parallel_size,
        "parallel.expert_model_parallel_size": cfg.parallel.expert_model_parallel_size,
        "rollout.tensor_parallel_size": cfg.rollout.tensor_parallel_size,
        "rollout.num_servers": cfg.rollout.num_servers,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "data.train_batch_size": cfg.data.train_batch_size,
        "data.mini_batch_size": cfg.data.mini_batch_size,
        "data.micro_batch_size": cfg.data.micro_batch_size,
        "data.max_prompt_length": cfg.data.max_prompt_length,
        "model.make_vocab_size_divisible_by": cfg.model.make_vocab_size_divisible_by,
        "sampling.train.n": cfg.sampling.train.n,
        "sampling.val.n": cfg.sampling.val.n,
        "reward.num_workers": cfg.reward.num_workers,
        "reward.verify_timeout_s": cfg.reward.verify_timeout_s,
        "trainer.total_epochs": cfg.trainer.total_epochs,
        "cluster.nodes": cfg.cluster.nodes,
        "cluster.gpus_per_node": cfg.cluster.gpus_per_node,
    }
    optional = {
        "parallel.data_parallel_size": cfg.parallel.data_parallel_size,
        "parallel.virtual_pipeline_model_parallel_size": cfg.parallel.virtual_pipeline_model_parallel_size,
        "rollout.gpus_per_server": cfg.rollout.gpus_per_server,
        "data.max_tokens_per_micro_batch": cfg.data.max_tokens_per_micro_batch,
        "data.max_tokens_per_old_micro_batch": cfg.data.max_tokens_per_old_micro_batch,
        "trainer.total_steps": cfg.trainer.total_steps,
        "checkpoint.keep_last": cfg.checkpoint.keep_last,
        "eval.max_new_tokens": cfg.eval.max_new_tokens,
        "eval.max_prompts": cfg.eval.max_prompts,
    }
    checks.update({k: v for k, v in optional.items() if v is not None})
    for key, value in checks.items():
        if value < 1:
            out.add(key, f"must be >= 1, got {value}")
    nonneg = {
        "checkpoint.save_every": cfg.checkpoint.save_every,
        "eval.every": cfg.eval.every,
        "logging.stdout_every": cfg.logging.stdout_every,
        "optim.warmup_steps": cfg.optim.warmup_steps,
        "rollout.max_retries": cfg.rollout.max_retries,
        "algorithm.dynamic_sampling.max_num_gen_batches": cfg.algorithm.dynamic_sampling.max_num_gen_batches,
    }
    for key, value in nonneg.items():
        if value < 0:
            out.add(key, f"must be >= 0, got {value}")
    timeouts = {
        "trainer.collective_timeout_minutes": cfg.trainer.collective_timeout_minutes,
        "trainer.lead_timeout_minutes": cfg.trainer.lead_timeout_minutes,
        "rollout.request_timeout_s": cfg.rollout.request_timeout_s,
        "rollout.startup_timeout_s": cfg.rollout.startup_timeout_s,
        "rollout.sync_timeout_s": cfg.rollout.sync_timeout_s,
    }
    for key, value in timeouts.items():
        if value <= 0:
            out.add(key, f"must be > 0, got {value}: a timeout has no 'off' value, set a positive limit")


def _timeouts(cfg: RootConfig, out: _Issues) -> None:
    """The other ranks must wait for rank 0 at least as long as one of its engine calls may take."""
    r, lead_s = cfg.rollout, cfg.trainer.lead_timeout_minutes * 60
    for key, seconds in (
        ("startup_timeout_s", r.startup_timeout_s),
        ("request_timeout_s", r.request_timeout_s),
    ):
        if 0 < lead_s < seconds:
            out.add(
                ["trainer.lead_timeout_minutes", f"rollout.{key}"],
                f"the other ranks would give up waiting for rank 0 ({lead_s:.0f} s) before rollout.{key} "
                f"({seconds:.0f} s) lets one engine call fail: raise trainer.lead_timeout_minutes to at least "
                f"{seconds / 60:.0f}, or lower rollout.{key}",
            )


def _layout(cfg: RootConfig, world_size: int, world_phrase: str, out: _Issues) -> None:
    p = cfg.parallel
    tp, pp, cp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size
    if min(tp, pp, cp) < 1:
        return  # reported by _positive
    layout_keys = [
        "parallel.tensor_model_parallel_size",
        "parallel.pipeline_model_parallel_size",
        "parallel.context_parallel_size",
    ]
    if p.data_parallel_size is not None:
        if tp * pp * cp * p.data_parallel_size != world_size:
            out.add(
                [*layout_keys, "parallel.data_parallel_size"],
                f"TP x PP x CP x DP = {tp} x {pp} x {cp} x {p.data_parallel_size} = "
                f"{tp * pp * cp * p.data_parallel_size} must equal the {world_phrase}",
            )
    elif world_size % (tp * pp * cp):
        out.add(
            layout_keys,
            f"TP x PP x CP = {tp * pp * cp} must divide the {world_phrase} (DP = world / (TP x PP x CP))",
        )
    if cp > 1:
        _context_parallel(cfg, out)
    ep = p.expert_model_parallel_size
    dp_cp = (p.data_parallel_size or world_size // (tp * pp * cp)) * cp
    if ep > 1 and dp_cp % ep:
        out.add(  # Megatron's expert-parallel groups are carved out of the DP x CP ranks of a TP rank and stage
            ["parallel.expert_model_parallel_size", *layout_keys[2:], "parallel.data_parallel_size"],
            f"expert parallelism EP={ep} must divide DP x CP = {dp_cp} (the {world_phrase} / (TP x PP))",
        )
    if p.sequence_parallel and tp == 1:
        out.add(
            ["parallel.sequence_parallel", "parallel.tensor_model_parallel_size"],
            "sequence parallelism splits activations across TP ranks and needs TP > 1; set sequence_parallel=false",
        )
    vp = p.virtual_pipeline_model_parallel_size
    if vp is not None and vp >= 1 and (vp == 1 or pp == 1):
        # Megatron's interleaved schedule needs PP > 1; one chunk per stage is the plain schedule
        out.add(
            ["parallel.virtual_pipeline_model_parallel_size", "parallel.pipeline_model_parallel_size"],
            f"an interleaved pipeline needs PP > 1 and >= 2 model chunks per stage (got PP={pp}, VP={vp}); "
            "set virtual_pipeline_model_parallel_size=null for one chunk per stage",
        )


def _batches(cfg: RootConfig, dp: int | None, out: _Issues) -> None:
    d, n = cfg.data, cfg.sampling.train.n
    if min(d.train_batch_size, d.mini_batch_size, d.micro_batch_size, n) < 1:
        return
    if d.train_batch_size % d.mini_batch_size:
        out.add(
            ["data.train_batch_size", "data.mini_batch_size"],
            f"train_batch_size {d.train_batch_size} must be a multiple of mini_batch_size {d.mini_batch_size} "
            "(each step runs train_batch_size / mini_batch_size optimizer updates)",
        )
    if dp is not None and d.max_tokens_per_micro_batch is None:
        per_update = d.mini_batch_size * n
        if per_update % (dp * d.micro_batch_size):
            out.add(
                [
                    "data.mini_batch_size",
                    "sampling.train.n",
                    "data.micro_batch_size",
                    "parallel.data_parallel_size",
                ],
                f"responses per optimizer update (mini_batch_size x n = {d.mini_batch_size} x {n} = {per_update}) "
                f"must be divisible by DP x micro_batch_size = {dp} x {d.micro_batch_size}",
            )
    elif dp is not None and (d.mini_batch_size * n) % dp:
        out.add(
            ["data.mini_batch_size", "sampling.train.n", "parallel.data_parallel_size"],
            f"responses per optimizer update ({d.mini_batch_size * n}) must be divisible by DP = {dp}",
        )
    longest = d.max_prompt_length + cfg.rollout.max_new_tokens
    multiple = cfg.parallel.sequence_multiple
    need = -(-longest // multiple) * multiple
    for key, budget in (
        ("data.max_tokens_per_micro_batch", d.max_tokens_per_micro_batch),
        ("data.max_tokens_per_old_micro_batch", d.max_tokens_per_old_micro_batch),
    ):
        if budget is not None and budget < need:
            out.add(
                [key, "data.max_prompt_length", "rollout.max_new_tokens"],
                f"{key}={budget} is smaller than the longest possible sequence, max_prompt_length + "
                f"max_new_tokens = {d.max_prompt_length} + {cfg.rollout.max_new_tokens}"
                + (f" (padded to a multiple of {multiple}: {need})" if need != longest else "")
                + f"; set it to at least {need} (docs/training.md, 'Micro-batches')",
            )
    if d.sequence_packing in ("mask", "thd"):
        packing_keys = ["data.sequence_packing"]
        if d.max_tokens_per_micro_batch is None:
            out.add(
                packing_keys + ["data.max_tokens_per_micro_batch"],
                f"data.sequence_packing={d.sequence_packing} packs responses into rows of at most "
                "data.max_tokens_per_micro_batch tokens: set that budget (or sequence_packing=auto/none)",
            )
        if d.sequence_packing == "mask" and cfg.model.layer_spec == "te":
            out.add(
                packing_keys + ["model.layer_spec"],
                "data.sequence_packing=mask needs Megatron's local attention: Transformer Engine's attention "
                "ignores an explicit mask under a causal mask type, so attention would cross sequences; use "
                "sequence_packing=thd (or auto) with layer_spec=te",
            )
        if d.sequence_packing == "thd" and cfg.model.layer_spec == "local":
            out.add(
                packing_keys + ["model.layer_spec"],
                "data.sequence_packing=thd needs Transformer Engine's attention (layer_spec=te or auto on a "
                "machine with TE): Megatron's local attention refuses PackedSeqParams; use sequence_packing=mask",
            )
    if n < 2:  # every registered advantage estimator compares a response with its group's others
        out.add(
            "sampling.train.n",
            f"the advantage estimators ({cfg.algorithm.adv_estimator}) are group-relative and need at least 2 "
            f"samples per prompt, got {n}",
        )


def _context_parallel(cfg: RootConfig, out: _Issues) -> None:
    """What context parallelism (models/context_parallel.py) does not do: a CP rank holds two chunks of every
    row and sees only its own tokens' loss terms."""
    cp, loss = cfg.parallel.context_parallel_size, cfg.algorithm.loss
    if cfg.model.layer_spec != "te" and cfg.model.local_attention == "unfused":
        out.add(
            ["parallel.context_parallel_size", "model.local_attention"],
            f"context parallelism (CP={cp}) on the local layer spec needs model.local_attention=sdpa (or auto): "
            "Megatron's unfused attention has no context parallelism",
        )
    if cfg.data.sequence_packing == "thd":
        out.add(
            ["parallel.context_parallel_size", "data.sequence_packing"],
            f"THD packed rows are not split across CP ranks (CP={cp}): use data.sequence_packing=mask (the local "
            "spec's route), none or auto",
        )
    if loss.stats_scope == "micro_batch":
        out.add(
            ["parallel.context_parallel_size", "algorithm.loss.stats_scope"],
            f"stats_scope=micro_batch takes entropy statistics over a micro-batch's tokens, of which a CP rank "
            f"holds 1/{cp}: use stats_scope=step (the step's statistics, from the old-policy pass) under CP",
        )
    if loss.agg == "seq-mean-token-mean":
        out.add(
            ["parallel.context_parallel_size", "algorithm.loss.agg"],
            "agg=seq-mean-token-mean divides each sequence's loss by its token count, which a CP rank does not "
            "see: use token-mean, seq-mean-token-sum or seq-mean-token-sum-norm under CP",
        )


def _attention(cfg: RootConfig, out: _Issues) -> None:
    if cfg.model.layer_spec == "te" and cfg.model.local_attention != "auto":
        out.add(
            ["model.local_attention", "model.layer_spec"],
            f"model.local_attention={cfg.model.local_attention} chooses the local spec's core attention, but "
            "layer_spec=te builds Transformer Engine's (fused attention of its own): leave local_attention=auto, "
            "or set layer_spec=local",
        )


def _precision(cfg: RootConfig, out: _Issues) -> None:
    pr = cfg.precision
    if pr.fp8 is not None and pr.fp8_recipe == "delayed" and pr.first_last_layers_bf16:
        out.add(
            ["precision.fp8_recipe", "precision.first_last_layers_bf16"],
            "the delayed FP8 recipe cannot keep first/last layers in bf16 (Megatron rejects it); "
            "use fp8_recipe=tensorwise or blockwise, or first_last_layers_bf16=false",
        )
    if pr.fp8_param and pr.fp8 is None:
        out.add(["precision.fp8_param", "precision.fp8"], "fp8_param needs FP8 on (set precision.fp8)")
    if pr.fp8_param and pr.fp8 is not None and not cfg.parallel.use_distributed_optimizer:
        # Megatron-LM asserts the same (--fp8-param-gather needs the distributed optimizer): the FP8 weights
        # are re-quantised from the optimizer's fp32 main copy, which only the distributed optimizer keeps.
        out.add(
            ["precision.fp8_param", "parallel.use_distributed_optimizer"],
            "fp8_param needs parallel.use_distributed_optimizer=true",
        )
    if pr.first_last_layers_bf16 and min(pr.num_layers_at_start_in_bf16, pr.num_layers_at_end_in_bf16) < 0:
        out.add("precision.num_layers_at_start_in_bf16", "bf16 layer counts must be >= 0")


# the in-process engine shares its GPUs with training ranks: a larger share leaves training no room
INPROCESS_MAX_MEM_FRACTION = 0.5


def _rollout(cfg: RootConfig, world_size: int, world_phrase: str, out: _Issues) -> None:
    r = cfg.rollout
    if r.tensor_parallel_size < 1:
        return
    gpus = r.gpus_per_server if r.gpus_per_server is not None else r.tensor_parallel_size
    if gpus < 1:
        return
    if gpus % r.tensor_parallel_size:
        out.add(
            ["rollout.gpus_per_server", "rollout.tensor_parallel_size"],
            f"GPUs per server ({gpus}) must be a multiple of the server TP size ({r.tensor_parallel_size})",
        )
    if r.engine == "inprocess":
        if world_size % gpus:
            out.add(
                ["rollout.tensor_parallel_size", "rollout.gpus_per_server"],
                f"in-process engines span {gpus} training ranks each; {gpus} must divide the {world_phrase}",
            )
        if gpus > cfg.cluster.gpus_per_node:
            out.add(
                ["rollout.gpus_per_server", "cluster.gpus_per_node"],
                f"an in-process engine ({gpus} GPUs) cannot span more than one node "
                f"({cfg.cluster.gpus_per_node} GPUs per node)",
            )
    else:
        if not r.server_addresses and not r.router_address and not r.launch_servers:
            out.add(
                ["rollout.server_addresses", "rollout.router_address"],
                "rollout.engine=fleet needs the servers' addresses or a router address "
                "(or rollout.launch_servers=true)",
            )
        if r.launch_servers and (r.server_addresses or r.router_address):
            out.add(
                ["rollout.launch_servers", "rollout.server_addresses", "rollout.router_address"],
                "rollout.launch_servers=true starts new servers, but addresses of existing ones are set too; "
                "either attach (launch_servers=false) or launch (server_addresses=[] router_address=null)",
            )
        if r.server_addresses and len(r.server_addresses) != r.num_servers:
            out.add(
                ["rollout.server_addresses", "rollout.num_servers"],
                f"{len(r.server_addresses)} server addresses given but num_servers={r.num_servers}",
            )
        remote = [u for u in r.server_addresses if not _is_loopback(urlparse(u).hostname or "")]
        if r.weight_sync == "distributed" and remote and _is_loopback(r.sync_address):
            out.add(
                ["rollout.sync_address", "rollout.server_addresses", "rollout.weight_sync"],
                f"the server {remote[0]} cannot join the weight-sync broadcast at {r.sync_address} (loopback: "
                "this machine only); set rollout.sync_address to this node's address as the servers see it, "
                "or rollout.weight_sync=disk on a file system the servers share",
            )
    if r.server_args:
        _server_args(cfg, out)
    if r.mem_fraction is not None and not 0.0 < r.mem_fraction < 1.0:
        out.add("rollout.mem_fraction", f"must be in (0, 1), got {r.mem_fraction}")
    elif (
        r.engine == "inprocess" and r.mem_fraction is not None and r.mem_fraction > INPROCESS_MAX_MEM_FRACTION
    ):
        out.add(
            ["rollout.mem_fraction", "rollout.engine"],
            f"the in-process engine shares each of its GPUs with a training rank: mem_fraction {r.mem_fraction} "
            f"leaves training {1 - r.mem_fraction:.0%} of the GPU, no room for its weights, gradients, optimizer "
            f"state and activations. The in-process engine is for development and small models: keep "
            f"rollout.mem_fraction <= {INPROCESS_MAX_MEM_FRACTION} (null = 0.3), or give the rollout GPUs of its "
            "own with rollout.engine=fleet (launch_servers=true, docs/rollout.md)",
        )
    if r.engine == "inprocess" and r.sync_policy != "wait":
        out.add(
            ["rollout.sync_policy", "rollout.engine"],
            f"sync_policy={r.sync_policy} needs rollout.engine=fleet: the in-process engine runs one call at a "
            "time, so a sync can only wait for a running generate call (sync_policy=wait)",
        )
    if r.launch_servers and r.gpus_per_server is not None and r.gpus_per_server != r.tensor_parallel_size:
        out.add(
            ["rollout.gpus_per_server", "rollout.tensor_parallel_size", "rollout.launch_servers"],
            f"a launched server runs TP {r.tensor_parallel_size} on its {r.gpus_per_server} GPUs; GPUs beyond "
            "its TP size would stay idle: set gpus_per_server to tensor_parallel_size (or null) and raise "
            "rollout.num_servers instead",
        )
    if r.max_staleness not in (0, 1):
        out.add(
            "rollout.max_staleness",
            f"must be 0 (on-policy) or 1 (one step overlapped), got {r.max_staleness}",
        )
    elif r.max_staleness == 1:
        if r.engine != "fleet":
            out.add(
                ["rollout.max_staleness", "rollout.engine"],
                "rollout.max_staleness=1 overlaps generation with training, which needs the engine in other "
                "processes (rollout.engine=fleet); the in-process engine shares the trainer's devices",
            )
        if cfg.algorithm.loss.tis_cap is None:
            out.add(
                ["rollout.max_staleness", "algorithm.loss.tis_cap"],
                "rollout.max_staleness=1 trains on responses sampled one weight version back: set "
                "algorithm.loss.tis_cap (e.g. 2.0) so truncated importance sampling corrects for it",
            )


def _server_args(cfg: RootConfig, out: _Issues) -> None:
    from megatron_hapo.rollout.serving import server_args_problems

    r = cfg.rollout
    # attached servers take them from hapo-serve, which reads this config; the trainer checks them at start-up
    for name, problem in server_args_problems(r.server_args)[1].items():
        out.add(f"rollout.server_args.{name}", problem)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it names another machine
        return False


def _sampling(cfg: RootConfig, out: _Issues) -> None:
    for name in ("train", "val"):
        s = getattr(cfg.sampling, name)
        if s.temperature <= 0:
            out.add(
                f"sampling.{name}.temperature", f"must be > 0 (greedy is not sampling), got {s.temperature}"
            )
        if not 0.0 < s.top_p <= 1.0:
            out.add(f"sampling.{name}.top_p", f"must be in (0, 1], got {s.top_p}")
        if s.top_k == 0 or s.top_k < -1:
            out.add(f"sampling.{name}.top_k", f"must be -1 (off) or >= 1, got {s.top_k}")


def _algorithm(cfg: RootConfig, out: _Issues) -> None:
    a = cfg.algorithm
    for fields, message in a.loss.problems():  # the loss states its own rules
        out.add([f"algorithm.loss.{f}" for f in fields], message)
    if a.tlga_fallback_threshold is not None and a.tlga_fallback_threshold <= 0:
        out.add("algorithm.tlga_fallback_threshold", f"must be > 0 or null, got {a.tlga_fallback_threshold}")
    ds = a.dynamic_sampling
    if ds.over_sample < 1:
        out.add(
            "algorithm.dynamic_sampling.over_sample",
            f"must be >= 1 (1 = refill by batches), got {ds.over_sample}",
        )
    elif ds.over_sample > 1 and not ds.enable:
        out.add(
            ["algorithm.dynamic_sampling.over_sample", "algorithm.dynamic_sampling.enable"],
            "over_sample > 1 only applies to dynamic sampling: enable it or set over_sample=1",
        )
    elif ds.over_sample > 1 and cfg.rollout.engine != "fleet":
        out.add(
            ["algorithm.dynamic_sampling.over_sample", "rollout.engine"],
            "over_sample > 1 streams groups and aborts the rest through the servers' abort API: it needs "
            "rollout.engine=fleet (with the in-process engine keep over_sample=1, the batch refill)",
        )
    try:
        from megatron_hapo.rollout.types import (
            AdaptiveTemperature,  # here: rollout.types imports config.errors
        )

        AdaptiveTemperature(tau=a.adaptive_temperature.tau)  # the one check of tau's range
    except ValueError as exc:
        out.add("algorithm.adaptive_temperature.tau", str(exc))


def _reward(cfg: RootConfig, out: _Issues) -> None:
    rw = cfg.reward
    if rw.call_timeout_s <= 0:
        out.add("reward.call_timeout_s", f"must be > 0, got {rw.call_timeout_s}")
    if rw.kill_grace_s < 0:
        out.add("reward.kill_grace_s", f"must be >= 0, got {rw.kill_grace_s}")
    if rw.scorer != "auto" and not rw.extra_modules:
        # with extra modules the workers register more scorers on import (ScorerPool names a missing one)
        from megatron_hapo.rewards import registered  # the built-in scorers register on import; no torch

        if rw.scorer not in registered():
            out.add(
                "reward.scorer",
                f"no reward scorer named {rw.scorer!r}; the registered ones are {sorted(registered())}: use one "
                "of them or auto, or register yours in a module listed in reward.extra_modules",
            )
    ov = rw.overlong
    if ov.enable:
        if not 0 < ov.buffer_len <= cfg.rollout.max_new_tokens:
            out.add(
                ["reward.overlong.buffer_len", "rollout.max_new_tokens"],
                f"the overlong buffer ({ov.buffer_len}) must be in [1, max_new_tokens={cfg.rollout.max_new_tokens}]",
            )
        if ov.penalty_factor < 0:
            out.add("reward.overlong.penalty_factor", f"must be >= 0, got {ov.penalty_factor}")


def _eval(cfg: RootConfig, out: _Issues) -> None:
    # the evaluator names each benchmark by its file stem (eval/benchmarks.py::benchmark_names); two files of
    # one stem would otherwise fail only when the evaluator is built, after the model
    first: dict[str, int] = {}
    for i, f in enumerate(cfg.eval.benchmarks):
        stem = Path(f).stem
        if stem not in first:
            first[stem] = i
            continue
        j = first[stem]
        out.add(
            [f"eval.benchmarks[{j}]", f"eval.benchmarks[{i}]"],
            f"{cfg.eval.benchmarks[j]} and {f} both get the benchmark name {stem!r} (a benchmark is named by its "
            "file stem, which names its metrics): rename one of the files, or drop one",
        )


def _optim(cfg: RootConfig, out: _Issues) -> None:
    o = cfg.optim
    if o.lr <= 0 or not 0 <= o.min_lr <= o.lr:
        out.add(
            ["optim.lr", "optim.min_lr"],
            f"need lr > 0 and 0 <= min_lr <= lr, got lr={o.lr}, min_lr={o.min_lr}",
        )
    if not all(0.0 <= b < 1.0 for b in o.betas):
        out.add("optim.betas", f"each beta must be in [0, 1), got {list(o.betas)}")
    if o.decay_steps is not None and o.decay_steps <= o.warmup_steps:
        out.add(
            ["optim.decay_steps", "optim.warmup_steps"],
            f"decay_steps={o.decay_steps} must be greater than warmup_steps={o.warmup_steps} (the decay counts "
            "from step 0, warmup included): raise optim.decay_steps, or set it to null to decay until the run ends",
        )
    if o.clip_grad < 0 or o.weight_decay < 0 or o.eps <= 0:
        out.add(
            ["optim.clip_grad", "optim.weight_decay", "optim.eps"],
            "need clip_grad >= 0, weight_decay >= 0, eps > 0",
        )


# --------------------------------------------------------------------------------- environment rules


def _fp8_env(cfg: RootConfig, probe: EnvProbe, out: _Issues) -> None:
    pr = cfg.precision
    needs_te = []
    if pr.fp8 is not None:
        needs_te.append("precision.fp8")
    if cfg.model.layer_spec == "te":
        needs_te.append("model.layer_spec")
    if needs_te and (err := probe.te_error()) is not None:
        out.add(
            needs_te,
            f"needs Transformer Engine, which does not import here ({err}). Install transformer-engine[pytorch] "
            "on a CUDA machine, or turn FP8 off (precision.fp8=null) / use model.layer_spec=local; "
            "FP8 never silently falls back to bf16",
        )
    if cfg.model.layer_spec == "auto" and cfg.model.local_attention != "auto" and probe.te_error() is None:
        out.add(
            ["model.local_attention", "model.layer_spec"],
            f"model.local_attention={cfg.model.local_attention} chooses the local spec's core attention, but "
            "layer_spec=auto picks Transformer Engine's spec here (TE imports): set layer_spec=local, or "
            "leave local_attention=auto",
        )
    packing = cfg.data.sequence_packing
    if cfg.model.layer_spec == "auto" and packing in ("mask", "thd"):
        te = probe.te_error() is None  # layer_spec=auto resolves to TE's spec exactly when TE imports
        if packing == "mask" and te:
            out.add(
                ["data.sequence_packing", "model.layer_spec"],
                "data.sequence_packing=mask needs Megatron's local attention, but layer_spec=auto picks "
                "Transformer Engine's here (whose attention ignores the packed rows' mask); set "
                "layer_spec=local, or sequence_packing=thd/auto",
            )
        elif packing == "thd" and not te:
            out.add(
                ["data.sequence_packing", "model.layer_spec"],
                "data.sequence_packing=thd needs Transformer Engine's attention, which does not import here "
                "(layer_spec=auto picks the local spec); use sequence_packing=mask or auto",
            )
    if (
        cfg.rollout.quantization == "fp8"
        and cfg.rollout.engine == "inprocess"
        and probe.gpu_capability() is None
    ):
        # SGLang's FP8 linear kernels are CUDA-only; a fleet's servers are checked by SGLang on their own nodes.
        out.add(
            "rollout.quantization",
            "FP8 rollout needs a CUDA GPU for the in-process SGLang engine and none is visible; "
            "set rollout.quantization=null to roll out in the checkpoint's dtype",
        )
    if pr.fp8 is None:
        return
    cap = probe.gpu_capability()
    need = _FP8_MIN_CAPABILITY[pr.fp8_recipe]
    if cap is None:
        out.add(
            "precision.fp8",
            "FP8 needs a CUDA GPU and none is visible; set precision.fp8=null to train in bf16",
        )
    elif tuple(cap) < need:
        out.add(
            ["precision.fp8", "precision.fp8_recipe"],
            f"the {pr.fp8_recipe} FP8 recipe needs compute capability >= sm{need[0]}{need[1]} "
            f"(Hopper-class for blockwise); this GPU is sm{cap[0]}{cap[1]}",
        )
    if pr.fp8_recipe == "blockwise" and cap is not None:
        cuda = probe.cuda_version()
        if cuda is None or cuda < _BLOCKWISE_MIN_CUDA:
            out.add(
                "precision.fp8_recipe",
                f"blockwise FP8 needs CUDA >= 12.9, torch here is built with CUDA {cuda}; use tensorwise",
            )


# Architectures whose SGLang 0.5.23 loader supports FP8 re-quantisation on weight sync (load_format=flash_rl:
# sglang/srt/models/qwen2.py and qwen3.py mark load_weights with @supports_quantized_rl_reload).
_FP8_ROLLOUT_ARCHS = ("Qwen2ForCausalLM", "Qwen3ForCausalLM")


def _fp8_rollout_model(cfg: RootConfig, out: _Issues) -> None:
    if cfg.rollout.quantization != "fp8":
        return
    config_json = find_config_json(cfg.model.hf_path)
    if config_json is None or not config_json.is_file():
        return  # a hub id not cached yet: SGLang checks the architecture at start-up
    try:
        config = json.loads(config_json.read_text())
    except (OSError, ValueError):
        return  # _model_shape reports an unreadable config.json
    if cfg.rollout.fp8_format == "blockwise":
        from megatron_hapo.sync.fp8 import blockwise_layout_problems

        problems = blockwise_layout_problems(config, tp_size=cfg.rollout.tensor_parallel_size)
        if problems:
            out.add(
                ["rollout.quantization", "rollout.fp8_format"],
                f"blockwise FP8 rollout cannot serve {config_json}: {'; '.join(problems)}. "
                "Use rollout.fp8_format=flashrl, another rollout TP, or rollout.quantization=null",
            )
        return
    archs = config.get("architectures") or []
    if archs and not set(archs) & set(_FP8_ROLLOUT_ARCHS):
        out.add(
            "rollout.quantization",
            f"FP8 rollout re-quantises synced weights through SGLang's FlashRL loader, which supports "
            f"{', '.join(_FP8_ROLLOUT_ARCHS)}; {config_json} is {', '.join(archs)}. "
            "Set rollout.quantization=null for this model",
        )


def _reward_env(cfg: RootConfig, out: _Issues) -> None:
    from megatron_hapo.rewards import extra_module_problem  # the built-in scorers only; no torch

    for i, module in enumerate(cfg.reward.extra_modules):
        if (problem := extra_module_problem(module)) is not None:
            out.add(
                f"reward.extra_modules[{i}]",
                f"{problem}; every reward worker imports it to register custom scorers: check the name, install "
                "its package or put its directory on PYTHONPATH",
            )


def _logging_env(cfg: RootConfig, out: _Issues) -> None:
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        out.add("logging.wandb", "needs the wandb package: pip install wandb, or set logging.wandb=false")


def _paths(cfg: RootConfig, out: _Issues) -> None:
    lists = {"data.train_files": cfg.data.train_files, "eval.benchmarks": cfg.eval.benchmarks}
    from megatron_hapo.data.rows import DATA_SUFFIXES  # the formats the loader reads (no torch import)

    for key, files in lists.items():
        for i, f in enumerate(files):
            if Path(f).suffix.lower() not in DATA_SUFFIXES:
                out.add(
                    f"{key}[{i}]",
                    f"{f}: unknown data format {Path(f).suffix or '(no extension)'!r}; the loader reads "
                    f"{', '.join(DATA_SUFFIXES)} (convert the file, e.g. pandas.read_csv(...).to_parquet(...))",
                )
            elif not Path(f).expanduser().is_file():
                out.add(f"{key}[{i}]", f"file not found: {f} (relative paths are relative to {Path.cwd()})")
    if not cfg.data.train_files:
        out.add("data.train_files", "needs at least one training file")
    for key, path in (
        ("model.hf_path", cfg.model.hf_path),
        ("model.tokenizer_path", cfg.model.tokenizer_path),
    ):
        if path is None or Path(path).expanduser().exists():
            continue
        if looks_like_hub_id(path):
            continue  # a hub id; resolved (and checked) when the model loads
        out.add(key, f"directory not found: {path} (relative paths are relative to {Path.cwd()})")
    run_dir = Path(cfg.trainer.run_dir).expanduser()
    existing = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = f"{run_dir} is an existing file" if existing == run_dir else f"{existing} is a file"
        out.add(
            "trainer.run_dir",
            f"{what}, not a directory; the run writes its config, metrics, logs and checkpoints under "
            "trainer.run_dir: choose another path or remove the file",
        )
    resume = cfg.checkpoint.resume
    if resume not in ("auto", "none") and not Path(resume).expanduser().exists():
        out.add("checkpoint.resume", f"checkpoint not found: {resume} (use auto, none or an existing path)")


def _model_shape(cfg: RootConfig, out: _Issues, *, check_env: bool) -> ModelShape | None:
    """The model's shape from its local config.json, else (only for a dry run, ``check_env=False``) from
    the table of known configs; None when neither has it."""
    config_json = find_config_json(cfg.model.hf_path)
    if config_json is not None and (check_env or config_json.is_file()):
        try:
            shape = read_model_shape(config_json, cfg.model.override_config)
        except ValueError as e:
            out.add("model.hf_path", str(e))
            return None
        _override_keys(cfg, config_json, out)
        return shape
    if not check_env:
        # a dry run plans for a cluster: the model may live only there (the table is pure data, but its
        # package imports torch, so the real run's validation does not consult it)
        return known_model_shape(cfg.model.hf_path, cfg.model.override_config)
    if looks_like_hub_id(cfg.model.hf_path):
        # Not in the local cache: the model loader downloads it and re-checks the layout then.
        logger.warning(
            "model.hf_path=%s is not a local directory, so it is taken as a hub id; it is not in the local "
            "HF cache, so head/layer divisibility is checked when the model loads, not now",
            cfg.model.hf_path,
        )
    return None


# transformers 5 still takes these top-level RoPE keys, into rope_parameters (read_model_shape refuses them
# for a config.json that keeps RoPE under rope_parameters)
_LEGACY_ROPE_KEYS = frozenset({"rope_theta", "rope_scaling"})


def _override_keys(cfg: RootConfig, config_json: Path, out: _Issues) -> None:
    """A ``model.override_config`` key that neither the model's config.json nor its transformers config class
    has is read by nothing (trainer, SGLang, HF export): a misspelling. Values are not looked into."""
    overrides = cfg.model.override_config
    try:
        raw = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # read_model_shape reports it
    unknown = [k for k in overrides if k not in raw and k not in _LEGACY_ROPE_KEYS]
    if not unknown:
        return  # the usual case: no transformers import (it imports torch)
    model_type = raw.get("model_type")
    try:
        import transformers

        config = (
            transformers.AutoConfig.for_model(model_type) if model_type else transformers.PretrainedConfig()
        )
    except Exception:  # no transformers here, or a model type it does not know: nothing to check against
        return
    known = set(raw) | set(config.to_dict()) | set(vars(config)) | set(type(config).attribute_map)
    for key in unknown:
        if key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known | _LEGACY_ROPE_KEYS), n=1)
        fix = f"did you mean {close[0]!r}?" if close else "check the key against the model's config.json"
        out.add(
            f"model.override_config.{key}",
            f"{key!r} is not a field of {config_json} nor of the {type(config).__name__} of model type "
            f"{model_type or '(none)'}, so nothing would read it; {fix}",
        )


def _model_fits(cfg: RootConfig, shape: ModelShape, out: _Issues) -> None:
    """The layout rules of ``model_info`` (the ones the model builder applies) with their config keys."""
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    src = f"(from {shape.source})"
    if tp >= 1:
        for problem in tp_problems(shape, tp):
            out.add("parallel.tensor_model_parallel_size", f"{problem} {src}")
    if pp >= 1:
        vp = p.virtual_pipeline_model_parallel_size
        keys = ["parallel.pipeline_model_parallel_size"]
        keys += ["parallel.virtual_pipeline_model_parallel_size"] if vp is not None else []
        for problem in pp_problems(shape, pp, vp):
            out.add(keys, f"{problem} {src}")
    for problem in rollout_tp_problems(shape, cfg.rollout.tensor_parallel_size):
        out.add("rollout.tensor_parallel_size", f"{problem} {src}")
    ep = p.expert_model_parallel_size
    if ep > 1 and not shape.num_experts:
        out.add(
            "parallel.expert_model_parallel_size",
            f"expert parallelism (EP={ep}) splits the experts of a mixture of experts; {shape.source} has none: "
            "set parallel.expert_model_parallel_size=1",
        )
    elif ep > 1 and shape.num_experts % ep:
        out.add(
            "parallel.expert_model_parallel_size",
            f"EP={ep} does not divide the {shape.num_experts} experts {src}",
        )
    if cfg.algorithm.rollout_routing_replay and not shape.num_experts:
        out.add(
            "algorithm.rollout_routing_replay",
            f"routing replay replays the experts a mixture of experts routed each token to; {shape.source} has "
            "no experts: set algorithm.rollout_routing_replay=false",
        )
    if shape.num_experts and tp > 1 and not p.sequence_parallel:
        out.add(  # Megatron's TransformerConfig refuses it at start-up
            ["parallel.sequence_parallel", "parallel.tensor_model_parallel_size"],
            f"a mixture of experts ({shape.num_experts} experts {src}) at TP={tp} needs sequence parallelism "
            "(Megatron refuses MoE with TP > 1 without it); set parallel.sequence_parallel=true",
        )
    if shape.num_experts and cfg.precision.fp8:
        # TE's FP8 GEMMs need each expert's token count padded (moe_router_padding_for_quantization); not built
        out.add(
            "precision.fp8",
            f"FP8 training of a mixture of experts ({shape.num_experts} experts {src}) is not supported yet; "
            "set precision.fp8=null to train it in bf16",
        )
    total = cfg.data.max_prompt_length + cfg.rollout.max_new_tokens
    if shape.max_position_embeddings is not None and total > shape.max_position_embeddings:
        out.add(
            ["data.max_prompt_length", "rollout.max_new_tokens"],
            f"prompt + response = {cfg.data.max_prompt_length} + {cfg.rollout.max_new_tokens} = {total} tokens "
            f"exceeds max_position_embeddings={shape.max_position_embeddings} {src}; shorten them or set "
            "model.override_config.max_position_embeddings",
        )


# ---------------------------------------------------------------------------------------------- entry


def collect_issues(
    cfg: RootConfig,
    *,
    world_size: int | None = None,
    origins: Mapping[str, str] | None = None,
    check_env: bool = True,
    probe: EnvProbe | None = None,
) -> list[ConfigIssue]:
    """Every cross-field problem of ``cfg`` (empty list = valid). See the module docstring."""
    out = _Issues(origins or {})
    ws, phrase = world_size_of(cfg, world_size)
    if ws < 1:
        out.add("", f"world size must be >= 1, got {ws}", source="launcher")
        return out.items
    _positive(cfg, out)
    _layout(cfg, ws, phrase, out)
    _batches(cfg, data_parallel_size(cfg, ws), out)
    _attention(cfg, out)
    _precision(cfg, out)
    _rollout(cfg, ws, phrase, out)
    _timeouts(cfg, out)
    _sampling(cfg, out)
    _algorithm(cfg, out)
    _reward(cfg, out)
    _eval(cfg, out)
    _optim(cfg, out)
    if check_env:
        _fp8_env(cfg, probe or EnvProbe(), out)
        _paths(cfg, out)
        _reward_env(cfg, out)
        _logging_env(cfg, out)
        _fp8_rollout_model(cfg, out)
    # The model-fit rules need only the model's config.json (or the known-config table), not the machine,
    # so they run in a dry run too.
    shape = _model_shape(cfg, out, check_env=check_env)
    if shape is not None:
        _model_fits(cfg, shape, out)
    return out.items


# What ``check_env=False`` (the dry run) leaves out, by name: these need the machine the run starts on.
ENV_CHECKS = (
    "Transformer Engine imports (precision.fp8, model.layer_spec=te, data.sequence_packing with layer_spec=auto)",
    "GPU compute capability and CUDA version for FP8",
    "data, benchmark, model and checkpoint paths exist",
    "reward.extra_modules can be found (importlib.util.find_spec)",
    "logging.wandb package installed",
    "FP8 rollout architecture (reads the local config.json)",
)


def validate(cfg: RootConfig, **kwargs) -> None:
    """Raise ConfigError listing every problem ``collect_issues`` finds (same keyword arguments)."""
    issues = collect_issues(cfg, **kwargs)
    if issues:
        raise ConfigError(issues)
