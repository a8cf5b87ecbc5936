"""The RL loop (DESIGN.md "One RL step"): rollout -> rewards -> dynamic sampling -> old-policy pass ->
step-global entropy statistics -> advantages -> policy update -> weight sync -> metrics -> checkpoint.

Every stage is a component built from the config by :func:`~megatron_hapo.trainer.setup.build_run`.
All ranks run this function; rank 0 owns the SGLang engine and the scorer and broadcasts the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch

import megatron_hapo.parallel as hp
from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.config import RootConfig
from megatron_hapo.parallel import compute_device, lead
from megatron_hapo.rollout import RolloutCancelled, RolloutSample
from megatron_hapo.trainer import checkpoint
from megatron_hapo.trainer.algorithm import compute_advantages
from megatron_hapo.trainer.batch import StepBatch, response_temperatures
from megatron_hapo.trainer.batching import MicroBatchPlan, plan_step
from megatron_hapo.trainer.experience import Experience
from megatron_hapo.trainer.metrics import batch_metrics, perf_metrics
from megatron_hapo.trainer.rollout_stage import version_lag
from megatron_hapo.trainer.setup import ResumePlan, Run, build_run, close_run, plan_resume
from megatron_hapo.trainer.shutdown import StopRequest
from megatron_hapo.trainer.state import TrainerState

logger = logging.getLogger(__name__)


def rl_step(run: Run, step: int, stats: EntropyStats | None) -> tuple[EntropyStats | None, dict] | None:
    """One RL step; returns this step's entropy statistics (for the next rollout) and its metrics, or None when
    its rollout was cancelled by a stop or failed (the step did not happen). ``rollout.max_staleness=1``: the
    next step's batch generates (weights and statistics of step - 1) while this one trains, and the sync waits
    for it (docs/rollout.md "Overlap"). Once the rollouts ended (``run.rollout.ended``: a stop's cancel, or the
    batch generating ahead failed) the step skips the weight sync: the run saves this step and ends."""
    t0 = time.perf_counter()
    # 1-3. rollout with last step's stats (None at step 1), rewards, dynamic sampling: same batch on every rank
    batch = run.rollout.collect(stats)  # at max_staleness=1: generated ahead during the last step
    if batch is None:
        return None
    waited = time.perf_counter() - t0
    if step < run.total_steps:
        run.rollout.launch_ahead(stats)  # a no-op at max_staleness=0
    # 4-6. advantages, old-policy pass, step-global entropy statistics, policy update
    t_train = time.perf_counter()
    new_stats, metrics = learn(run.cfg, run.policy, batch)
    t_wait = time.perf_counter()
    metrics["time/train_s"] = t_wait - t_train
    # no request in flight while the weights change; the other ranks wait for that here, not in the export's
    # collectives
    sync = run.rollout.finish_ahead()  # False once the rollouts ended: the run ends after this step
    metrics["time/rollout_wait_s"] = waited + time.perf_counter() - t_wait
    metrics["rollout/staleness"] = version_lag(batch, step)
    if sync:
        metrics.update(sync_engine(run, step))  # 7. weight sync into the engine, version = step
    metrics["time/step_s"] = time.perf_counter() - t0
    return new_stats, metrics


def sync_engine(run: Run, step: int) -> dict[str, float]:
    """The weight sync into the engine after ``step`` (version ``step-<step>``), and its metrics. A failure
    on the lead (a server lost under ``rollout.on_server_failure=fail``) ends the rollouts
    (``run.rollout.failure``; the other ranks learn it after the step): the loop saves this step, then
    raises it."""
    try:
        return run.policy.sync_weights(run.synchronizer, version=f"step-{step}")
    except Exception as exc:
        run.rollout.record_failure(exc, "weight sync into the engine")
        return {}


def learn(
    cfg: RootConfig, policy, batch: StepBatch, *, whole_step_padding: bool = False
) -> tuple[EntropyStats, dict]:
    """Steps 4-6 on one step's batch (every rank holds all of it and trains its data-parallel share), with
    the batch's metrics. Needs no rollout engine: tests drive it from a fixed batch, on CPU and GPU.

    The layout (which rank, update and micro-batch each response goes to) comes from
    :func:`~megatron_hapo.trainer.batching.plan_step` (``data.max_tokens_per_micro_batch``: token budgets,
    else fixed ``micro_batch_size``); this rank's responses become one :class:`Experience`, on the compute
    device once, which the old-policy pass fills and the update reads. ``whole_step_padding`` pads every
    micro-batch to the step's longest sequence (the historical layout; benchmarks and tests)."""
    from megatron.core import parallel_state as ps

    d = cfg.data
    base_t = cfg.sampling.train.temperature
    adaptive = cfg.algorithm.adaptive_temperature.enable
    temps = [
        response_temperatures(s, cfg.algorithm.ratio_temperature, base_t, adaptive) for s in batch.samples
    ]
    seq_lens = [len(s.prompt_ids) + len(s.response_ids) for s in batch.samples]
    plan = plan_step(
        seq_lens,
        policy.dp_size,
        d.train_batch_size // d.mini_batch_size,
        max_tokens=d.max_tokens_per_micro_batch,
        max_tokens_old=d.max_tokens_per_old_micro_batch,
        micro_batch_size=d.micro_batch_size,
        pad_multiple=cfg.parallel.sequence_multiple,
        micro_batch_multiple=cfg.parallel.micro_batch_multiple,
        pad_to_step=whole_step_padding,
        packed=policy.packing != "none" and not whole_step_padding,
    )
    # 4. advantages over the whole step's groups (identical on every rank); this rank's responses
    advantages = response_advantages(cfg, batch)
    rank = ps.get_data_parallel_rank() if policy.dp_size > 1 else 0
    rows = plan.responses[rank]
    samples = (
        with_routed_experts(batch, plan.responses, rank)  # routing replay: the experts come from the lead
        if policy.replayed_routing is not None
        else [batch.samples[i] for i in rows]
    )
    exp = Experience.build(
        samples, [temps[i] for i in rows], [advantages[i] for i in rows],
        [batch.group_ids[i] for i in rows], rows, device=compute_device(), routing=policy.replayed_routing,
    )  # fmt: skip
    local = {g: i for i, g in enumerate(rows)}

    def on_rank(mb: MicroBatchPlan) -> MicroBatchPlan:  # step indices -> rows of exp
        return dataclasses.replace(mb, rows=tuple(local[g] for g in mb.rows))

    # 5. old-policy pass on this rank's responses; step-global entropy statistics over all DP ranks
    t_old = time.perf_counter()
    policy.old_policy_pass(exp, [on_rank(mb) for mb in plan.old[rank]])
    new_stats = policy.entropy_stats(exp.entropy, exp.mask)
    t_old = time.perf_counter() - t_old
    # 6. policy update: mini-batches x micro-batches through Megatron's schedule, fused HAPO loss
    t_upd = time.perf_counter()
    mini = [[on_rank(mb) for mb in m] for m in plan.update[rank]]
    # L_norm of agg=seq-mean-token-sum-norm, unless set: the padded response length (Dr. GRPO's, verl's constant)
    metrics = policy.update(exp, mini, new_stats, norm_len=cfg.rollout.max_new_tokens)
    t_upd = time.perf_counter() - t_upd
    # metrics of the whole batch (entropy/temperature token statistics all-reduced over DP ranks)
    metrics.update(batch_metrics(batch, exp.entropy, exp.mask, exp.temperature, group=policy.dp_group))
    metrics.update({f"entropy/{k}": v for k, v in new_stats.to_dict().items()})
    metrics.update({"time/old_policy_s": t_old, "time/update_s": t_upd})
    metrics.update(perf_metrics(plan, t_old, t_upd))
    return new_stats, metrics


def with_routed_experts(batch: StepBatch, responses: list[list[int]], rank: int) -> list[RolloutSample]:
    """The samples of data-parallel rank ``rank`` (step indices ``responses[rank]``) with their routed experts.
    Only the lead holds those (``RolloutStage.collect`` keeps them out of the step's broadcast: hundreds of bytes
    per token); each rank receives its own share from it (``parallel/lead.py::scatter_from_lead``)."""
    shares = None
    if torch.distributed.get_rank() == 0:
        shares = [[batch.samples[i].routed_experts for i in rows] for rows in responses]
    mine = lead.scatter_from_lead(shares, replica=rank)
    return [
        dataclasses.replace(batch.samples[i], routed_experts=r)
        for i, r in zip(responses[rank], mine, strict=True)
    ]


def response_advantages(cfg: RootConfig, batch: StepBatch) -> list[float]:
    """One advantage per response (the estimators give the same value at every token of a response),
    computed over the whole step's groups. The estimator sees a ``[N, longest sequence]`` response mask, the
    width whole-step padding gave it (``tlga_fallback_counts_padding`` looks at padded positions)."""
    r_lens = torch.tensor([len(s.response_ids) for s in batch.samples])
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in batch.samples)
    mask = (torch.arange(width)[None, :] < r_lens[:, None]).float()
    rewards = torch.tensor(batch.scores, dtype=torch.float32)
    per_token = compute_advantages(cfg, rewards, mask, batch.group_ids)
    return torch.where(r_lens > 0, per_token[:, 0], torch.zeros(())).tolist()


def train(cfg: RootConfig) -> Run:
    """Run ``cfg`` to ``trainer.total_steps``; resumes per ``checkpoint.resume``. Returns the (closed) run.

    A SIGTERM/SIGINT at any moment (``trainer/shutdown.py``) ends the run with a checkpoint of the last
    completed step and raises :class:`~megatron_hapo.trainer.shutdown.TrainingStopped` (exit 128 + signal).
    Initialises torch.distributed if needed and tears the model-parallel groups down at the end; the
    default process group stays up (the caller destroys it).
    """
    stop = StopRequest().install()  # from here on SIGTERM/SIGINT is a request to stop, whatever is running
    try:
        hp.init_distributed(timeout_minutes=cfg.trainer.collective_timeout_minutes)
        lead.init_lead_group(cfg.trainer.lead_timeout_minutes)  # the waits for rank 0's solo work
        stop.forward_to_lead()  # a signal on any rank cancels rank 0's rollout
        p = cfg.parallel
        hp.initialize_model_parallel(
            p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.context_parallel_size,
            virtual_pipeline_parallel=p.virtual_pipeline_model_parallel_size, seed=cfg.trainer.seed,
            expert_model_parallel_size=p.expert_model_parallel_size,
        )  # fmt: skip
        with hp.device_mode():
            plan = plan_resume(cfg)  # run directory and checkpoint checked before any engine starts
            run = build_run(cfg, plan)
            try:
                step = _run_steps(run, plan, stop)
            finally:
                close_run(run)
        lead.wait_for_lead()  # no rank leaves while another still needs it (rank 0 shuts the engine down)
        if stop.stopped is None:
            stop.agreed(step)  # a signal after the last save still ends in 128 + signal (that step is saved)
    finally:
        stop.uninstall()
        lead.destroy_lead_group()
        hp.destroy_model_parallel()  # also after a second signal: an in-process caller can train again
    stop.raise_if_stopped()
    return run


def _run_steps(run: Run, plan: ResumePlan, stop: StopRequest) -> int:
    """Steps from the plan's checkpoint to the end or to an agreed stop; returns the last completed step."""
    stop.on_stop(run.rollout.cancel)  # a stop cancels the rollout in progress rather than wait for it
    state = resume(run, plan)
    # eval.before_train, or the evaluation of the checkpoint's step that a stop or a failure cut short
    if (
        run.evaluator is not None
        and run.evaluator.pending(state.step, last=state.step == run.total_steps)
        and (m := eval_metrics(run, state.step))
    ):
        run.logger.log(state.step, m)
    run.rollout.agree_on_failure()  # that evaluation's, on the lead
    stopping = stop.agreed(state.step)  # a signal during start-up: the last completed step is saved already
    saved = state.step
    while not stopping and not run.rollout.ended and state.step < run.total_steps:
        step = state.step + 1
        done = rl_step(run, step, state.entropy_stats)  # None: its rollout was cancelled or failed
        if done is not None:
            state.entropy_stats, metrics = done
            state.step = step
            metrics.update(eval_metrics(run, step))  # after this step's weight sync
            run.logger.log(step, metrics)
        run.rollout.agree_on_failure()  # the weight sync's or the evaluation's, on the lead
        stopping = stop.agreed(state.step)
        if run.rollout.cancelled and not stopping:  # (the signal that cancelled it reached a rank)
            raise RuntimeError("the rollout was cancelled, but no rank received a stop signal")
        every = run.cfg.checkpoint.save_every
        due = (every and state.step % every == 0) or state.step == run.total_steps
        if state.step > saved and (due or stopping or run.rollout.ended):
            save(run, state)
            saved = state.step
            stopping = stopping or stop.agreed(state.step)  # a signal during the save: saved, stop now
    if run.rollout.failure is not None:  # after the save of the last completed step
        saved_note = f"step {state.step}, which is saved" if state.step else "nothing (no step completed)"
        logger.error("the run stops after %s: fix what failed (below), then checkpoint.resume=auto continues "
                     "from its last checkpoint", saved_note)  # fmt: skip
        raise run.rollout.failure
    report_best_eval(run)
    return state.step


def resume(run: Run, plan: ResumePlan) -> TrainerState:
    """Restore ``plan``'s checkpoint (if any): the policy (``checkpoint.load``), the rollout stage's data
    position and the loop's :class:`TrainerState`; then make the engine serve the trainer's weights."""
    state = TrainerState()
    if plan.checkpoint is not None:
        saved = checkpoint.load(run.policy, plan.checkpoint)
        run.rollout.load_state_dict(saved["rollout"])
        state.load_state_dict(saved)
    # the engine serves exactly the trainer's weights
    run.policy.sync_weights(run.synchronizer, version=f"step-{plan.step}")
    return state


def save(run: Run, state: TrainerState) -> None:
    """Checkpoint after ``state.step``: model, optimizer, scheduler (``checkpoint.save``), the loop's state
    and the rollout stage's (under ``rollout``)."""
    cfg = run.cfg
    saved = {**state.state_dict(), "rollout": run.rollout.state_dict()}
    hf_reference = cfg.model.hf_path if cfg.checkpoint.hf_export else None
    checkpoint.save(run.policy, cfg.checkpoint.dir, state.step, saved, cfg.checkpoint.keep_last, hf_reference)


def eval_metrics(run: Run, step: int) -> dict[str, float]:
    """``eval/<benchmark>/avg@k``, ``.../pass@j``, ... when evaluation is due after ``step`` (0 = before
    training); the lead evaluates with the rollout engine, which already serves this step's weights."""
    ev = run.evaluator
    last = step == run.total_steps  # evaluated whatever eval.every: the weights the run ends with
    if ev is None or not ev.due(step, last=last) or run.rollout.ended:  # the engine generates no more
        return {}
    try:
        result = ev.run(run.rollout.engine, step)
    except RolloutCancelled:
        logger.warning(
            "the stop cancelled the evaluation after step %d; a resume from that step's checkpoint continues it",
            step,
        )
        return {}
    except Exception as exc:  # a server lost, the scorer: the run saves this step, then raises it
        run.rollout.record_failure(exc, f"evaluation after step {step}")
        return {}
    logger.info("evaluation after step %d:\n%s", step, result.table())
    return result.metrics()


def report_best_eval(run: Run) -> None:
    """Print the per-benchmark best avg@k (and its step) over the run's evaluations, those of the attempts
    before a resume included (each was appended to eval_history.jsonl as it ran)."""
    ev = run.evaluator
    if ev is None or not ev.history.results:
        return
    print("best evaluation so far (max avg@k per benchmark):\n" + ev.history.best_table(), flush=True)
