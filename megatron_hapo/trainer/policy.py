"""The policy on Megatron: the model (GPTModel + DDP, with the optimizer and LR schedule of
``trainer/optim.py``), the old-policy pass, the policy update through Megatron's pipeline schedule with the
configured policy loss (``algorithm.policy_loss``, from the registry, fed by the fused log-prob/entropy op),
and weight export for the sync. The update's loss metrics combine as that loss declares
(``algorithms/metric_reduction.py``).

Loss scaling across data-parallel ranks: the loss of every micro-batch is divided by the step's *global*
normaliser (tokens or sequences over all micro-batches and DP ranks of the mini-batch), so the sum of the
micro-batch losses over all ranks is the mini-batch loss. Megatron's DDP *averages* gradients over DP
(and its schedule divides each micro-batch loss by the number of micro-batches), so the loss handed to
the schedule is multiplied by ``num_microbatches x dp_size`` to get the summed gradient back
(docs/algorithm.md, "global normaliser"). Under context parallelism a rank's loss is its tokens' share of the
micro-batch loss; DDP then averages over DP x CP and the schedule multiplies each loss by CP, which cancel.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import (
    EntropyStats,
    get_policy_loss,
    normalize_entropy,
    policy_loss_metrics,
    reduce_metrics,
)
from megatron_hapo.config import RootConfig
from megatron_hapo.models.context_parallel import local_part
from megatron_hapo.models.packing import forward_micro_batch, resolve_packing
from megatron_hapo.models.scoring import mask_padded_vocab, schedule_iterators
from megatron_hapo.ops import fused_hapo_loss
from megatron_hapo.parallel import compute_device
from megatron_hapo.trainer.batching import MicroBatchPlan
from megatron_hapo.trainer.experience import Experience
from megatron_hapo.trainer.optim import DTYPES, build_optimizer, build_scheduler

logger = logging.getLogger(__name__)


# The interleaved schedule's point-to-point settings (Megatron-LM's defaults under a virtual pipeline):
# separate send/recv calls per direction. Batched, a step that sends both ways posts [send grad, send
# activation] to a peer that posts [recv activation, recv grad]; at PP=2, where the previous and the next
# stage are the same rank, the receives matched the wrong sends: micro-batches padded to their own length
# got each other's shapes (found by tests/dist_jobs/job_virtual_pipeline.py).
INTERLEAVED_P2P = {"overlap_p2p_comm": True, "batch_p2p_comm": False}


def metrics_to_host(rows: list[dict[str, torch.Tensor | float]]) -> list[dict[str, float]]:
    """Per-micro-batch metrics (0-d tensors on the compute device, or plain numbers) -> floats, with one
    device-to-host copy for the whole update: a ``float()`` per metric inside the loss function would stop
    the CPU until the GPU caught up, about 20 times per micro-batch, before the backward could be queued."""
    tensors = [v.reshape(()).to(torch.float64) for r in rows for v in r.values() if torch.is_tensor(v)]
    host = iter(torch.stack(tensors).tolist() if tensors else [])
    return [{k: next(host) if torch.is_tensor(v) else float(v) for k, v in r.items()} for r in rows]


class Policy:
    """This rank's policy model (``chunks``: one DDP-wrapped GPTModel, or one per virtual-pipeline stage
    under an interleaved pipeline), Megatron optimizer and LR scheduler, and the policy loss
    ``algorithm.policy_loss`` names in the registry with its metric reductions."""

    def __init__(self, cfg: RootConfig, optimizer_steps: int):
        from megatron.core import parallel_state as ps
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )

        from megatron_hapo.checkpoint_io import load_hf_weights
        from megatron_hapo.models import build_gpt_model
        from megatron_hapo.models.precision import (
            fp8_config_overrides,
            fp8_ddp_overrides,
            log_implementations,
        )

        self.cfg = cfg
        dtype = DTYPES[cfg.precision.dtype]
        self.packing = packing_route(cfg)
        recompute = {}
        if cfg.model.recompute_granularity != "none":
            recompute = {"recompute_granularity": cfg.model.recompute_granularity}
            if cfg.model.recompute_granularity == "full":
                recompute.update(
                    recompute_method=cfg.model.recompute_method,
                    recompute_num_layers=cfg.model.recompute_num_layers,
                )
        # one model chunk per virtual-pipeline stage (interleaved schedule), else one (Megatron's get_model)
        vp = ps.get_virtual_pipeline_model_parallel_world_size()
        gpts = [
            build_gpt_model(
                cfg.model.hf_path,
                params_dtype=dtype,
                spec=cfg.model.layer_spec,
                local_attention=cfg.model.local_attention,
                make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
                hf_overrides=dict(cfg.model.override_config),
                vp_stage=stage,
                config_overrides={
                    "sequence_parallel": cfg.parallel.sequence_parallel,
                    # the fused (CUDA) causal softmax of unfused attention ignores the block-diagonal mask of packed rows
                    **({"masked_softmax_fusion": False} if self.packing == "mask" else {}),
                    **recompute,
                    # every router owns a RouterReplay: it can take the engine's experts (models/routing_replay.py)
                    **({"moe_enable_routing_replay": True} if cfg.algorithm.rollout_routing_replay else {}),
                    **fp8_config_overrides(cfg.precision),
                    **(INTERLEAVED_P2P if vp else {}),
                },
            )
            for stage in (range(vp) if vp else [None])
        ]
        if cfg.model.load_weights:
            load_hf_weights(gpts, cfg.model.hf_path)
        self.arch = gpts[0].hapo_arch
        self.vocab_size = self.arch.vocab_size
        # (MoE layers, top_k) of the experts each sample carries under routing replay, else None
        self.replayed_routing = (
            (self.arch.num_layers, self.arch.moe.top_k) if cfg.algorithm.rollout_routing_replay else None
        )
        ddp_config = DistributedDataParallelConfig(
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
            grad_reduce_in_fp32=True,
            **fp8_ddp_overrides(cfg.precision),
        )
        # chunks after the first in one bucket each, as Megatron's get_model does
        self.chunks = [
            DistributedDataParallel(config=g.config, ddp_config=ddp_config, module=g, disable_bucketing=i > 0)
            for i, g in enumerate(gpts)
        ]
        no_sync = [c.no_sync for c in self.chunks] if vp else self.chunks[0].no_sync
        for c, g in zip(self.chunks, gpts, strict=True):
            c.hapo_arch = g.hapo_arch
            g.config.finalize_model_grads_func = finalize_model_grads
            g.config.no_sync_func = no_sync
            # micro-batches are padded to their own length: under PP the schedule exchanges each one's shape
            g.config.variable_seq_lengths = ps.get_pipeline_model_parallel_world_size() > 1
        self.optimizer = build_optimizer(cfg, self.chunks)
        self.scheduler = build_scheduler(cfg, self.optimizer, optimizer_steps)
        self.loss_cfg = cfg.algorithm.loss
        self.policy_loss = get_policy_loss(cfg.algorithm.policy_loss)  # the registry: no loss special-cased
        self.loss_metrics = policy_loss_metrics(cfg.algorithm.policy_loss)
        self.dp_size = ps.get_data_parallel_world_size()
        self.dp_group = ps.get_data_parallel_group() if self.dp_size > 1 else None
        # the ranks whose micro-batches make up an update: DP x CP (a CP rank holds part of every sequence)
        self.dp_cp_size = ps.get_data_parallel_world_size(with_context_parallel=True)
        self.dp_cp_group = (
            ps.get_data_parallel_group(with_context_parallel=True) if self.dp_cp_size > 1 else None
        )
        self.tp_group = (
            ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None
        )
        log_implementations(gpts[0], self.optimizer)  # which Adam / norm / linear classes Megatron chose

    @property
    def model(self):
        """The DDP-wrapped model, when it is one chunk (no interleaved pipeline); else see ``chunks``."""
        if len(self.chunks) != 1:
            raise ValueError(
                f"this policy has {len(self.chunks)} virtual-pipeline chunks: use Policy.chunks, not Policy.model"
            )
        return self.chunks[0]

    def train_mode(self, on: bool) -> None:
        """``train()`` / ``eval()`` on every chunk."""
        for c in self.chunks:
            c.train(on)

    # ------------------------------------------------------------------------------- old-policy pass
    def old_policy_pass(self, exp: Experience, micro_batches: list[MicroBatchPlan]) -> None:
        """Fill ``exp.old_log_prob`` and ``exp.entropy`` (log π_old and entropy at each token's T_t) over
        ``micro_batches`` (rows index ``exp``); every pipeline stage ends up with the values."""
        from megatron.core import parallel_state as ps

        from megatron_hapo.models.scoring import forward_log_prob_entropy

        self.train_mode(False)

        def fill(mb, result):
            exp.scatter("old_log_prob", mb, result[0])
            exp.scatter("entropy", mb, result[1])

        forward_log_prob_entropy(
            self.chunks,
            (self.micro_batch(exp, p) for p in micro_batches),  # built one at a time
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

    def micro_batch(self, exp: Experience, plan: MicroBatchPlan):
        """The tensors of one planned micro-batch: a packed row on this policy's packing route, else rows."""
        if plan.packed:
            return exp.packed_micro_batch(plan.rows, plan.seq_len, self.packing)
        return exp.micro_batch(plan.rows, plan.seq_len)

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
        (token-mean) or responses with >= 1 token (seq-mean-*) of ``rows``; float64 on exp's device.
        Counted on the host and written by a fill kernel: no copy the host would wait for."""
        lens = [exp.host_response_lens[i] for i in rows]
        count = sum(lens) if self.loss_cfg.agg == "token-mean" else sum(n > 0 for n in lens)
        return torch.full((), count, dtype=torch.float64, device=exp.response_lens.device)

    def update(
        self,
        exp: Experience,
        mini_batches: list[list[MicroBatchPlan]],
        stats: EntropyStats | None,
        norm_len: int | None = None,
    ) -> dict[str, float]:
        """One optimizer step per entry of ``mini_batches`` (this rank's micro-batches of it; every DP rank
        passes the same number of micro-batches). ``norm_len``: L_norm of agg=seq-mean-token-sum-norm when
        ``algorithm.loss.token_sum_norm_len`` is null (the trainer passes ``rollout.max_new_tokens``, the padded
        response length of Dr. GRPO and verl), so the loss depends on neither a micro-batch's padded length nor
        the step's longest prompt.

        The loss metrics (actor/*) are over every DP rank's micro-batches, combined as the configured policy
        loss declares (``self.loss_metrics``, algorithms/metric_reduction.py); optim/grad_norm is the mean
        over the mini-batches, optim/lr the LR after the last."""
        from megatron.core import parallel_state as ps
        from megatron.core.pipeline_parallel import get_forward_backward_func

        loss_cfg = self.loss_cfg
        if loss_cfg.token_sum_norm_len is None and norm_len is not None:
            loss_cfg = dataclasses.replace(loss_cfg, token_sum_norm_len=norm_len)
        step_stats = stats if loss_cfg.stats_scope == "step" else None
        num_mini = len(mini_batches)
        per_update: list[list[dict[str, float]]] = []  # every DP rank's micro-batch metrics, per update
        grad_norm_mean = 0.0
        self.train_mode(True)
        for plans in mini_batches:
            normalizer = self.loss_normalizer(exp, [r for p in plans for r in p.rows])
            if self.dp_group is not None:
                dist.all_reduce(normalizer, group=self.dp_group)
            scale = len(plans) * self.dp_size
            collected: list[dict] = []
            micro = (self.micro_batch(exp, p) for p in plans)  # built one at a time

            def forward_step(data_iterator, model, _norm=normalizer, _scale=scale, _out=collected):
                part = local_part(next(data_iterator))  # this CP rank's tokens of every sequence
                output = forward_micro_batch(model, part)  # [b, s, V/tp]

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
                        policy_loss=self.policy_loss,
                        segments=part.segments,
                    )
                    # detached (a metric holding its graph would keep the activations alive), to the
                    # host once after the schedule
                    _out.append({k: v.detach() if torch.is_tensor(v) else v for k, v in metrics.items()})
                    return loss * _scale, {"pg_loss": loss.detach().clone()}

                return output, loss_func

            for c in self.chunks:
                c.zero_grad_buffer()
            self.optimizer.zero_grad()
            get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=schedule_iterators(micro, len(self.chunks)),
                model=self.chunks,
                num_microbatches=len(plans),
                seq_length=plans[0].seq_len,  # ignored under PP (variable_seq_lengths), unused without
                micro_batch_size=plans[0].batch_rows,
                forward_only=False,
            )
            ok, grad_norm, _ = self.optimizer.step()
            if not ok:
                raise RuntimeError("optimizer step skipped: non-finite gradients (check the loss inputs)")
            self.scheduler.step(increment=1)
            grad_norm_mean += float(grad_norm or 0.0) / num_mini
            collected = metrics_to_host(collected)
            # every rank's micro-batches: the ranks hold different responses (DP) or tokens of them (CP)
            if self.dp_cp_group is not None:
                parts: list = [None] * self.dp_cp_size
                dist.all_gather_object(parts, collected, group=self.dp_cp_group)
                collected = [c for part in parts for c in part]
            per_update.append(collected)
        loss_metrics = reduce_metrics(per_update, self.loss_metrics)
        if ps.get_pipeline_model_parallel_world_size() > 1:  # loss metrics exist on the last stage only
            box = [loss_metrics]
            dist.broadcast_object_list(
                box,
                src=ps.get_pipeline_model_parallel_last_rank(),
                group=ps.get_pipeline_model_parallel_group(),
            )
            loss_metrics = box[0]
        return {
            "optim/grad_norm": grad_norm_mean,
            **{f"actor/{k}": v for k, v in loss_metrics.items()},
            "optim/lr": self.optimizer.param_groups[0]["lr"],
        }

    # ------------------------------------------------------------------------------------- sync
    def sync_weights(self, synchronizer, version: str) -> dict[str, float]:
        """Hand the stream of HF-named weights to ``synchronizer`` (``sync.WeightSynchronizer``, held by
        global rank 0); the model-parallel peers of rank 0 iterate the collective export in lockstep; other
        data-parallel replicas have nothing to do, except under expert parallelism (``runs_the_export``)."""
        from megatron_hapo.checkpoint_io import export_hf_weights
        from megatron_hapo.checkpoint_io.export import runs_the_export

        t0 = time.perf_counter()
        if not runs_the_export():  # another replica (DP x CP) holds the same weights
            return {}
        named = export_hf_weights(self.chunks)
        if synchronizer is not None:
            try:
                return synchronizer.sync(named, version).metrics()
            except Exception:
                for _ in named:  # the model-parallel peers iterate the export in lockstep: let them finish
                    pass
                raise
        for _ in named:
            pass
        return {"time/sync_s": time.perf_counter() - t0}


def packing_route(cfg: RootConfig) -> str:
    """The packing route for this run's layer spec ("none", "mask", "thd"; models/packing.py), logged."""
    from megatron_hapo.models.builder import uses_te_spec

    route, why = resolve_packing(
        cfg.data.sequence_packing,
        uses_te_spec(cfg.model.layer_spec),
        cfg.data.max_tokens_per_micro_batch is not None,
        cfg.parallel.context_parallel_size,
    )
    logger.info("sequence packing: %s (%s)", route, why)
    return route
