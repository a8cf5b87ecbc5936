"""Build the components of a run from its config (called by :func:`megatron_hapo.trainer.loop.train`)."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch.distributed as dist

from megatron_hapo.config import RootConfig, save_resolved
from megatron_hapo.config.errors import HapoError
from megatron_hapo.console import engine_log_file, start_resource_tracker
from megatron_hapo.parallel.lead import broadcast_from_lead, wait_for_lead
from megatron_hapo.trainer.metrics import RunLogger, truncate_step_rows

if TYPE_CHECKING:  # built in build_run (Megatron, SGLang: heavy imports)
    from megatron_hapo.eval import Evaluator
    from megatron_hapo.sync import WeightSynchronizer
    from megatron_hapo.trainer.policy import Policy
    from megatron_hapo.trainer.rollout_stage import RolloutStage

logger = logging.getLogger(__name__)

EVAL_HISTORY = "eval_history.jsonl"  # in the run directory: one line per evaluation (eval/periodic.py)
EVAL_ANSWERS = "eval_answers"  # in the run directory: each evaluation's scored answers, step_<N>.jsonl


@dataclass
class Run:
    cfg: RootConfig
    lead: bool
    run_dir: Path
    policy: Policy
    rollout: RolloutStage
    logger: RunLogger
    total_steps: int
    evaluator: Evaluator | None = None  # on the lead when eval.benchmarks is set
    synchronizer: WeightSynchronizer | None = None  # on the lead: the weight sync into the rollout engine


def resolve_run_dir(cfg: RootConfig) -> Path:
    """``trainer.run_dir``; the same on every rank."""
    return Path(cfg.trainer.run_dir)


@dataclass(frozen=True)
class ResumePlan:
    """What :func:`plan_resume` decided before anything heavy starts: the verified checkpoint (or None for
    a fresh start) and its step (0 when fresh)."""

    checkpoint: Path | None
    step: int


class RunDirectoryInUse(HapoError, ValueError):
    """``checkpoint.resume=none`` on a run directory that already holds a run."""


def plan_resume(cfg: RootConfig) -> ResumePlan:
    """Check the run directory and the checkpoint to resume from; collective (rank 0 checks, all ranks get
    its answer or its error). Call before :func:`build_run`: a bad checkpoint or a refused run directory
    costs seconds, not an engine start.

    ``checkpoint.resume=none`` where the run directory already has metrics rows or checkpoints is refused
    (it would mix two runs' rows and prune the old run's checkpoints)."""
    from megatron_hapo.trainer import checkpoint, manifest

    answer = None
    if dist.get_rank() == 0:
        try:
            _refuse_fresh_start_over_a_run(cfg)
            # select verifies the checkpoint, reading every file (minutes at scale): its step is not read again
            path = checkpoint.select(cfg.checkpoint.resume, cfg.checkpoint.dir)
            step = manifest.recorded_step(path) if path is not None else 0
            answer = ResumePlan(path, step)
        except ValueError as e:  # CheckpointInvalid, RunDirectoryInUse: the same error on every rank
            answer = e
    answer = broadcast_from_lead(answer)
    if isinstance(answer, Exception):
        raise answer
    if answer.checkpoint is not None:
        logger.info(
            "resuming from %s (step %d), verified against its manifest", answer.checkpoint, answer.step
        )
    return answer


def _refuse_fresh_start_over_a_run(cfg: RootConfig) -> None:
    from megatron_hapo.trainer.checkpoint import list_checkpoints

    if cfg.checkpoint.resume != "none":
        return
    run_dir = resolve_run_dir(cfg)
    metrics = run_dir / "metrics.jsonl"
    held = [str(p) for p in list_checkpoints(cfg.checkpoint.dir)]
    if metrics.is_file() and metrics.stat().st_size > 0:
        held.append(str(metrics))
    if held:
        raise RunDirectoryInUse(
            f"checkpoint.resume=none, but trainer.run_dir={run_dir} already holds a run ({', '.join(held[:3])}"
            f"{', ...' if len(held) > 3 else ''}). Either continue it with checkpoint.resume=auto, or start "
            f"a new run in another directory (trainer.run_dir=...), or delete {run_dir} first"
        )


def build_run(cfg: RootConfig, plan: ResumePlan | None = None) -> Run:
    """Model, optimizer, engine, scorer, data, logger. Call inside ``hp.device_mode()`` after model-parallel
    init, after :func:`plan_resume` (``plan``: the metrics rows after its step are dropped)."""
    from transformers import AutoTokenizer

    from megatron_hapo.data import PromptDataset, PromptOrder
    from megatron_hapo.eval import Evaluator, drop_journals_after
    from megatron_hapo.rewards import ScorerPool
    from megatron_hapo.rollout.serving import rollout_model_path
    from megatron_hapo.sync import make_synchronizer
    from megatron_hapo.trainer.policy import Policy
    from megatron_hapo.trainer.rollout_stage import RolloutStage, make_engine

    lead = dist.get_rank() == 0
    seed = cfg.trainer.seed
    random.seed(seed)
    np.random.seed(seed)
    run_dir = resolve_run_dir(cfg)
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir, rank=0, echo=False)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer_path or cfg.model.hf_path)
    dataset = PromptDataset.from_config(cfg.data, tokenizer, scorer=cfg.reward.scorer)
    order = PromptOrder(
        len(dataset), cfg.data.train_batch_size, seed=cfg.data.seed, shuffle=cfg.data.shuffle,
        drop_last=cfg.data.drop_last,
    )  # fmt: skip
    total = cfg.trainer.total_steps or cfg.trainer.total_epochs * order.batches_per_epoch
    if cfg.trainer.total_steps is None and cfg.algorithm.dynamic_sampling.enable and lead:
        logger.warning(
            "trainer.total_epochs=%d sets the run to %d steps (total_epochs x %d steps per epoch); dynamic sampling "
            "draws extra prompts for a step's refills, so those steps pass over the prompts more than %d time(s): "
            "set trainer.total_steps to choose the length yourself",
            cfg.trainer.total_epochs, total, order.batches_per_epoch, cfg.trainer.total_epochs,
        )  # fmt: skip
    updates = cfg.data.train_batch_size // cfg.data.mini_batch_size
    t0 = time.perf_counter()
    policy = Policy(cfg, optimizer_steps=total * updates)
    engine = scorer = evaluator = synchronizer = None
    if lead:
        start_resource_tracker(engine_log_file(run_dir))  # its exit notice goes to sglang.log
        scorer = ScorerPool.from_config(cfg.reward)
        evaluator = Evaluator.from_config(cfg, tokenizer, scorer=scorer)  # benchmark files fail fast
        engine = make_engine(cfg, run_dir)
        synchronizer = make_synchronizer(cfg, engine, rollout_model_path(cfg, run_dir), run_dir)
        logger.info("engine and scorer ready in %.1f s", time.perf_counter() - t0)
    resume_step = plan.step if plan is not None else None
    if evaluator is not None:
        if resume_step is not None:  # like metrics.jsonl: the interrupted attempt's later evaluations go
            truncate_step_rows(run_dir / EVAL_HISTORY, resume_step)
            drop_journals_after(run_dir / EVAL_ANSWERS, resume_step)
        evaluator.record_to(run_dir / EVAL_HISTORY, run_dir / EVAL_ANSWERS)
    run_logger = RunLogger(run_dir, cfg, lead=lead, resume_step=resume_step, total_steps=total)
    wait_for_lead()  # its engine start (up to rollout.startup_timeout_s)
    return Run(
        cfg=cfg,
        lead=lead,
        run_dir=run_dir,
        policy=policy,
        rollout=RolloutStage(cfg, dataset, order, tokenizer, engine, scorer),
        logger=run_logger,
        total_steps=total,
        evaluator=evaluator,
        synchronizer=synchronizer,
    )


def close_run(run: Run) -> None:
    """Close the metrics files, stop the scorer pool and shut the rollout engine (or fleet) down: every step
    even when one before it fails (a full disk failing the plots, say); then the first failure is raised, but
    the synchronizer's, which is only logged (its servers may be gone already)."""
    # the synchronizer's distributed group with the engine goes first; the pool before the engine: SGLang's own
    # shutdown SIGKILLs every child of this process, the pool's workers included; shutdown_sglang_engine keeps it
    # to the engine's processes, and this order keeps a clean stop should any engine ever do that again
    steps = [("the metrics files", run.logger.close, True)]
    if run.synchronizer is not None:
        steps.append(("the weight synchronizer", run.synchronizer.close, False))
    if run.rollout.scorer is not None:
        steps.append(("the scorer pool", run.rollout.scorer.close, True))
    if run.rollout.engine is not None:
        steps.append(("the rollout engine", run.rollout.engine.shutdown, True))
    failure = None
    for what, close, raises in steps:
        try:
            close()
        except Exception as exc:  # the next ones still run: never leave the engine or the pool behind
            logger.warning("closing %s failed: %s", what, exc)
            failure = failure or (exc if raises else None)
    if failure is not None:
        raise failure
