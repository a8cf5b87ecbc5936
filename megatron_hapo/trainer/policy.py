"""The policy on Megatron: build (GPTModel + DDP + optimizer + LR schedule), the old-policy pass, the policy
update through Megatron's pipeline schedule with the fused HAPO loss, and weight export for the sync.

Loss scaling across data-parallel ranks: the loss of every micro-batch is divided by the step's *global*
normaliser (tokens or sequences over all micro-batches and DP ranks of the mini-batch), so the sum of the
micro-batch losses over all ranks is the mini-batch loss. Megatron's DDP *averages* gradients over DP
(and its schedule divides each micro-batch loss by the number of micro-batches), so the loss handed to
the schedule is multiplied by ``num_microbatches x dp_size`` to get the summed gradient back
(docs/algorithm.md, "global normaliser").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import EntropyStats, normalize_entropy
from megatron_hapo.config import RootConfig
from megatron_hapo.models.scoring import mask_padded_vocab
from megatron_hapo.ops import fused_hapo_loss
from megatron_hapo.parallel import compute_device
from megatron_hapo.trainer.algorithm import loss_config
from megatron_hapo.trainer.batching import MicroBatchPlan
from megatron_hapo.trainer.experience import Experience

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# metrics summed over micro-batches (the others are averaged, weighted by tokens)
_SUMMED = ("pg_loss", "n_tokens", "dar/scaled_up_count", "dar/scaled_down_count")


class Policy:
    """This rank's policy model with its DDP wrapper, Megatron optimizer and LR scheduler."""

    def __init__(self, cfg: RootConfig, optimizer_steps: int):
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        from megatron_hapo.models import build_gpt_model, load_hf_weights
        from megatron_hapo.models.precision import (
            fp8_config_overrides,
            fp8_ddp_overrides,
            fp8_optimizer_overrides,
            log_implementations,
        )

        self.cfg = cfg
        dtype = _DTYPES[cfg.precision.dtype]
        recompute = {}
        if cfg.model.recompute_granularity != "none":
            recompute = {"recompute_granularity": cfg.model.recompute_granularity}
            if cfg.model.recompute_granularity == "full":
                recompute.update(
                    recompute_method=cfg.model.recompute_method,
                    recompute_num_layers=cfg.model.recompute_num_layers,
                )
        gpt = build_gpt_model(
            cfg.model.hf_path,
            params_dtype=dtype,
            spec=cfg.model.layer_spec,
            make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
            hf_overrides=dict(cfg.model.override_config),
            config_overrides={
                "sequence_parallel": cfg.parallel.sequence_parallel,
                **recompute,
                **fp8_config_overrides(cfg.precision),
            },
        )
        if cfg.model.load_weights:
            load_hf_weights(gpt, cfg.model.hf_path)
        self.arch = gpt.hapo_arch
        self.vocab_size = gpt.hapo_arch.vocab_size
        ddp_config = DistributedDataParallelConfig(
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
            grad_reduce_in_fp32=True,
            **fp8_ddp_overrides(cfg.precision),
        )
        self.model = DistributedDataParallel(config=gpt.config, ddp_config=ddp_config, module=gpt)
        self.model.hapo_arch = gpt.hapo_arch
        gpt.config.finalize_model_grads_func = finalize_model_grads
        gpt.config.no_sync_func = self.model.no_sync
        # micro-batches are padded to their own length: under PP the schedule exchanges each one's shape
        gpt.config.variable_seq_lengths = ps.get_pipeline_model_parallel_world_size() > 1
        o = cfg.optim
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam",
                lr=o.lr,
                min_lr=o.min_lr,
                weight_decay=o.weight_decay,
                adam_beta1=o.betas[0],
                adam_beta2=o.betas[1],
                adam_eps=o.eps,
                clip_grad=o.clip_grad,
                bf16=dtype == torch.bfloat16,
                fp16=dtype == torch.float16,
                params_dtype=dtype,
                use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
                **fp8_optimizer_overrides(cfg.precision),
            ),
            [self.model],
        )
        decay = max(o.decay_steps or optimizer_steps, o.warmup_steps + 1)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if o.warmup_steps else o.lr,
            max_lr=o.lr,
            min_lr=o.min_lr,
            lr_warmup_steps=o.warmup_steps,
            lr_decay_steps=decay,
            lr_decay_style=o.schedule,
            start_wd=o.weight_decay,
            end_wd=o.weight_decay,
            wd_incr_steps=decay,
            wd_incr_style="constant",
        )
        self.loss_cfg = loss_config(cfg)
        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_group = ps.get_data_parallel_group() if self.dp_size > 1 else None
        self.tp_group = (
            ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
        )
        log_implementations(gpt, self.optimizer)  # which Adam / norm / linear classes Megatron chose

    # ------------------------------------------------------------------------------- old-policy pass
    def old_policy_pass(self, exp: Experience, micro_batches: list[MicroBatchPlan]) -> None:
        """Fill ``exp.old_log_prob`` and ``exp.entropy`` (log π_old and entropy at each token's T_t) over
        ``micro_batches`` (rows index ``exp``); every pipeline stage ends up with the values."""
        from megatron.core import parallel_state as ps

        from megatron_hapo.models.scoring import forward_log_prob_entropy

        self.model.eval()

        def fill(mb, result):
            exp.scatter("old_log_prob", mb, result[0])
            exp.scatter("entropy", mb, result[1])

        forward_log_prob_entropy(
            self.model,
            (exp.micro_batch(p.rows, p.seq_len) for p in micro_batches),  # built one at a time
            self.vocab_size,
            num_microbatches=len(micro_batches),
            on_output=fill,
        )
        if ps.get_pipeline_model_parallel_world_size() > 1:
            both = torch.stack([exp.old_log_prob, exp.entropy])
            torch.distributed.broadcast(
                both,
                src=ps.get_pipeline_model_parallel_last_rank(),
                group=ps.get_pipeline_model_parallel_group(),
            )
            exp.old_log_prob.copy_(both[0])
            exp.entropy.copy_(both[1])

    def entropy_stats(self, entropy: torch.Tensor, mask: torch.Tensor) -> EntropyStats:
        """Step-global entropy statistics over every DP rank's response tokens (exact pivot)."""
        device = compute_device()  # the DP all-reduces of the statistics run on NCCL's device on GPUs
        _, stats = normalize_entropy(
            entropy.to(device),
            mask.to(device),
            pivot_quantile=self.loss_cfg.pivot_quantile,
            mode=self.loss_cfg.entropy_mode,
            group=self.dp_group,
            eps=self.loss_cfg.entropy_eps,
        )
        return stats

    # ------------------------------------------------------------------------------------ update
    def loss_normalizer(self, exp: Experience, rows: list[int]) -> torch.Tensor:
        """This rank's share of a mini-batch's global normaliser N (aggregation.py): response tokens
        (token-mean) or responses with >= 1 token (seq-mean-*) of ``rows``; float64 on exp's device."""
        lens = exp.response_lens[torch.tensor(rows, dtype=torch.long, device=exp.response_lens.device)]
        count = lens.sum() if self.loss_cfg.agg == "token-mean" else (lens > 0).sum()
        return count.double()

    def update(
        self,
        exp: Experience,
        mini_batches: list[list[MicroBatchPlan]],
        stats: EntropyStats | None,
        norm_len: int | None = None,
    ) -> dict[str, float]:
        """One optimizer step per entry of ``mini_batches`` (this rank's micro-batches of it; every DP rank
        passes the same number of micro-batches). ``norm_len``: L_norm of agg=seq-mean-token-sum-norm when
        ``algorithm.loss.token_sum_norm_len`` is null (the step's longest sequence, what whole-step padding
        used), so the loss does not depend on each micro-batch's padded length.

        The loss metrics (actor/*) are over every DP rank's micro-batches: sums (pg_loss, n_tokens, counts)
        and token-weighted means of the whole mini-batch, averaged over the mini-batches."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        loss_cfg = self.loss_cfg
        if loss_cfg.token_sum_norm_len is None and norm_len is not None:
            loss_cfg = dataclasses.replace(loss_cfg, token_sum_norm_len=norm_len)
        step_stats = stats if loss_cfg.stats_scope == "step" else None
        num_mini = len(mini_batches)
        agg = defaultdict(float)
        self.model.train()
        for plans in mini_batches:
            normalizer = self.loss_normalizer(exp, [r for p in plans for r in p.rows])
            if self.dp_group is not None:
                dist.all_reduce(normalizer, group=self.dp_group)
            scale = len(plans) * self.dp_size
            collected: list[dict] = []
            micro = (exp.micro_batch(p.rows, p.seq_len) for p in plans)  # built one at a time

            def forward_step(data_iterator, model, _norm=normalizer, _scale=scale, _out=collected):
                part = next(data_iterator)
                output = model(part.tokens, part.position_ids, part.attention_mask)  # [b, s, V/tp]

                def loss_func(logits):
                    loss, metrics = fused_hapo_loss(
                        mask_padded_vocab(logits, self.vocab_size),
                        part.targets,
                        part.old_log_prob,
                        part.advantages,
                        part.mask,
                        loss_cfg,
                        temperature=part.temperature,
                        tp_group=self.tp_group,
                        stats=step_stats,
                        rollout_log_prob=part.rollout_log_prob,
                        global_normalizer=_norm.to(torch.float32),
                    )
                    if float(metrics.get("n_tokens", 1.0)) > 0:  # an all-padding micro-batch reports nothing
                        _out.append({k: float(v) for k, v in metrics.items()})
                    return loss * _scale, {"pg_loss": loss.detach().clone()}

                return output, loss_func

            self.model.zero_grad_buffer()
            self.optimizer.zero_grad()
            get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=micro,
                model=[self.model],
                num_microbatches=len(plans),
                seq_length=plans[0].seq_len,  # ignored under PP (variable_seq_lengths), unused without
                micro_batch_size=max(len(plans[0].rows), 1),
                forward_only=False,
            )
            ok, grad_norm, _ = self.optimizer.step()
            if not ok:
                raise RuntimeError("optimizer step skipped: non-finite gradients (check the loss inputs)")
            self.scheduler.step(increment=1)
            agg["grad_norm"] += float(grad_norm or 0.0) / num_mini
            if self.dp_group is not None:  # every rank's micro-batches: the ranks hold different responses
                parts: list = [None] * self.dp_size
                dist.all_gather_object(parts, collected, group=self.dp_group)
                collected = [c for part in parts for c in part]
            _merge(agg, collected, num_mini)
        if ps.get_pipeline_model_parallel_world_size() > 1:  # loss metrics exist on the last stage only
            box = [{k: v for k, v in agg.items() if k != "grad_norm"}]
            dist.broadcast_object_list(
                box,
                src=ps.get_pipeline_model_parallel_last_rank(),
                group=ps.get_pipeline_model_parallel_group(),
            )
            agg.update(box[0])
        agg["lr"] = self.optimizer.param_groups[0]["lr"]
        return {f"actor/{k}" if k not in ("grad_norm", "lr") else f"optim/{k}": v for k, v in agg.items()}

    # ------------------------------------------------------------------------------------- sync
    def sync_weights(self, synchronizer, version: str) -> dict[str, float]:
        """Hand the stream of HF-named weights to ``synchronizer`` (``sync.WeightSynchronizer``, held by
        global rank 0); the model-parallel peers of rank 0 iterate the collective export in lockstep; other
        data-parallel replicas have nothing to do."""
        from megatron.core import parallel_state as ps

        from megatron_hapo.models import export_hf_weights

        t0 = time.perf_counter()
        if ps.get_data_parallel_rank() != 0:
            return {}
        named = export_hf_weights(self.model)
        if synchronizer is not None:
            return synchronizer.sync(named, version).metrics()
        for _ in named:
            pass
        return {"time/sync_s": time.perf_counter() - t0}


def _merge(agg: dict, collected: list[dict], num_mini_batches: int) -> None:
    """Micro-batch metrics -> one value per step: sums for counts and the loss, token-weighted means else."""
    if not collected:
        return
    tokens = sum(c.get("n_tokens", 0.0) for c in collected) or 1.0
    keys = set().union(*collected)
    for k in keys:
        if k in _SUMMED:
            agg[k] += sum(c.get(k, 0.0) for c in collected) / (num_mini_batches if k == "pg_loss" else 1)
        elif k.endswith("/min"):
            agg[k] = min(agg.get(k, float("inf")), min(c[k] for c in collected if k in c))
        elif k.endswith("/max"):
            agg[k] = max(agg.get(k, float("-inf")), max(c[k] for c in collected if k in c))
        else:
            agg[k] += (
                sum(c.get(k, 0.0) * c.get("n_tokens", 0.0) for c in collected) / tokens / num_mini_batches
            )
