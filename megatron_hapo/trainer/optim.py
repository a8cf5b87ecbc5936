"""The policy's Megatron optimizer (Adam, optionally distributed over DP ranks) and its LR schedule, from
the ``optim``, ``precision`` and ``parallel`` config sections.

    lr(k) = linear warm-up 0 -> optim.lr over optim.warmup_steps updates, then optim.schedule
            (constant / linear / cosine) down to optim.min_lr at decay_steps
    decay_steps = max(optim.decay_steps or the run's optimizer steps, warmup_steps + 1)

One LR step per optimizer step (``train_batch_size / mini_batch_size`` per RL step).

A resume follows this run's config, not the schedule the checkpoint was written with: the checkpoint gives
the progress (the optimizer steps taken), the config everything else. So a run resumed with a longer
``trainer.total_steps`` decays over the longer run; each setting that changed is named in a warning
(:func:`load_scheduler_state`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from megatron_hapo.config import RootConfig

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# the schedule's settings in the scheduler's state_dict, and what sets each
SCHEDULE_SETTINGS = {
    "max_lr": "optim.lr",
    "min_lr": "optim.min_lr",
    "lr_warmup_steps": "optim.warmup_steps",
    "lr_decay_steps": "optim.decay_steps, or the run's optimizer steps (trainer.total_steps x updates per step)",
    "lr_decay_style": "optim.schedule",
    "start_wd": "optim.weight_decay",
}


def build_optimizer(cfg: RootConfig, chunks: list):
    """``megatron.core.optimizer.get_megatron_optimizer`` over the DDP-wrapped model ``chunks`` (one per
    virtual-pipeline stage)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_hapo.models.precision import fp8_optimizer_overrides

    o, dtype = cfg.optim, DTYPES[cfg.precision.dtype]
    return get_megatron_optimizer(
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
        list(chunks),
    )


def build_scheduler(cfg: RootConfig, optimizer, optimizer_steps: int):
    """Megatron's ``OptimizerParamScheduler`` for ``optimizer`` over a run of ``optimizer_steps`` updates."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optim
    decay = max(o.decay_steps or optimizer_steps, o.warmup_steps + 1)
    return OptimizerParamScheduler(
        optimizer,
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
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,  # a checkpoint's state gives the progress only
    )


def load_scheduler_state(scheduler, saved: dict[str, Any]) -> None:
    """Restore the progress of ``scheduler`` (Megatron's ``OptimizerParamScheduler`` of :func:`build_scheduler`)
    from a checkpoint's ``saved`` state, keeping this run's schedule; every setting that differs from the one
    the checkpoint was trained with is named in a warning. (Megatron's default would take the checkpoint's
    settings, and log that at INFO only: a resume with a longer run kept the old decay length, and trained at
    ``min_lr`` past it.)"""
    now = scheduler.state_dict()
    changed = [
        f"{k} {saved[k]} -> {now[k]} ({v})"
        for k, v in SCHEDULE_SETTINGS.items()
        if saved.get(k, now[k]) != now[k]
    ]
    if changed:
        logger.warning(
            "the LR schedule follows this run's config, not the checkpoint's, from optimizer step %d on: %s",
            saved["num_steps"],
            "; ".join(changed),
        )
    scheduler.load_state_dict(saved)
