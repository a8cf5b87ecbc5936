"""Rollout stage: generate n responses per prompt (HAPO adaptive temperature from the previous step's
statistics), score them, apply DAPO dynamic sampling, and hand the same :class:`StepBatch` to every rank.

Only the lead rank (global rank 0) owns the SGLang engine and the scorer pool; the other ranks receive
the batch by ``broadcast_object_list``, its per-token lists as arrays (``StepBatch.compact``).
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import EntropyStats, dynamic_sampling_filter
from megatron_hapo.config import RootConfig
from megatron_hapo.config.errors import HapoError
from megatron_hapo.console import engine_log_file
from megatron_hapo.data import PromptDataset, PromptOrder
from megatron_hapo.parallel.lead import broadcast_from_lead, max_over_ranks
from megatron_hapo.rewards import ScoreRequest, ScorerPool, apply_overlong
from megatron_hapo.rollout import GenerationParams, InProcessSGLangEngine
from megatron_hapo.rollout.serving import (
    check_attached_servers,
    engine_server_args,
    fleet_config,
    report_server_args,
    rollout_model_path,
    uses_hapo_sampler,
)
from megatron_hapo.rollout.types import (
    AdaptiveTemperature,
    RolloutCancelled,
    RolloutEngine,
    RolloutSample,
    sample_seed,
)
from megatron_hapo.trainer.batch import StepBatch

if TYPE_CHECKING:
    from megatron_hapo.rollout.fleet import SGLangFleet

logger = logging.getLogger(__name__)


class DynamicSamplingError(HapoError, RuntimeError):
    """Dynamic sampling could not fill a step within algorithm.dynamic_sampling.max_num_gen_batches."""


class RolloutFailed(HapoError, RuntimeError):
    """What the other ranks raise when rank 0's rollout failed (rank 0 raises its own error), once the run
    saved its last completed step."""


def make_engine(cfg: RootConfig, run_dir: str | Path | None = None) -> RolloutEngine:
    """The rollout engine ``cfg.rollout.engine`` names: ``inprocess`` (SGLang colocated with the trainer)
    or ``fleet`` (SGLang servers behind a router: launched here or attached by address). ``run_dir``
    holds the fleet's server logs."""
    builders = {"inprocess": _inprocess_engine, "fleet": _fleet_engine}
    # SGLang draws its ports from Python's global `random`, which build_run seeded with trainer.seed: two
    # runs with one seed on one machine would pick the same ports. Start the engine from fresh entropy.
    seeded = random.getstate()
    random.seed()
    try:
        engine = builders[cfg.rollout.engine](cfg, run_dir)
    finally:
        random.setstate(seeded)
    if cfg.rollout.server_args:
        report_server_args(cfg.rollout.server_args, engine, "rollout.server_args")
    return engine


def _inprocess_engine(cfg: RootConfig, run_dir) -> InProcessSGLangEngine:
    args = engine_server_args(cfg)
    if torch.cuda.is_available():  # its share of training's GPUs; on CPU, cpu_server_args() sizes it
        args["mem_fraction_static"] = cfg.rollout.mem_fraction
    return InProcessSGLangEngine(
        rollout_model_path(cfg, run_dir),
        hapo_sampler=uses_hapo_sampler(cfg),  # responses must then carry hapo_* per token
        tp_size=cfg.rollout.tensor_parallel_size,
        seed=cfg.trainer.seed,
        log_file=engine_log_file(run_dir),  # run_dir/logs/sglang.log unless --verbose
        **args,
    )


def _fleet_engine(cfg: RootConfig, run_dir) -> SGLangFleet:
    """Launch ``rollout.num_servers`` servers + a router (``launch_servers``), or attach to
    ``server_addresses`` / ``router_address`` and check that those servers run as this config would have
    launched them (:func:`~megatron_hapo.rollout.serving.required_server_settings`)."""
    from megatron_hapo.rollout.fleet import SGLangFleet
    from megatron_hapo.rollout.placement import server_gpus as server_gpus_for

    r = cfg.rollout
    fleet_cfg = fleet_config(cfg, run_dir)
    if not r.launch_servers:
        attached = replace(fleet_cfg, attach_urls=tuple(r.server_addresses), router_url=r.router_address)
        check_attached_servers(cfg, attached)
        return SGLangFleet(attached)
    if torch.cuda.is_available():  # each server on GPUs of its own, after the training ranks of this node
        training_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        per_server = r.gpus_per_server or r.tensor_parallel_size
        placed = server_gpus_for(r.num_servers, per_server, torch.cuda.device_count(), training_gpus)
        fleet_cfg = replace(fleet_cfg, server_gpus=tuple(tuple(g) for g in placed))
    return SGLangFleet(fleet_cfg)


class RolloutStage:
    """generate -> score -> (dynamic sampling, refill) for one step. ``engine``/``scorer`` only on the lead."""

    def __init__(self, cfg, dataset: PromptDataset, order: PromptOrder, tokenizer, engine, scorer):
        self.cfg, self.dataset, self.order, self.tokenizer = cfg, dataset, order, tokenizer
        self.engine: RolloutEngine | None = engine
        self.scorer: ScorerPool | None = scorer
        self._next_group = 0  # group id of the next prompt generated (it seeds that prompt's samples)
        self._spare_prompts: list[int] = []  # over-sampling: prompts drawn from the order, not yet submitted
        # rollout.max_staleness=1 (lead only): the next step's batch, generating in a thread or completed
        self._ahead: threading.Thread | None = None
        self._ahead_result: StepBatch | BaseException | None = None
        # a stop cancelled a rollout, or a rollout failed (every rank knows once collect or finish_ahead
        # returned): the engine generates no more, and the data position is the one from before that rollout.
        # failure: the lead's own error, elsewhere a RolloutFailed naming it; the loop raises it after its save
        self.cancelled = False
        self.failure: BaseException | None = None

    @property
    def ended(self) -> bool:
        """No more rollouts in this run: a stop cancelled one, or one failed. The run saves and stops."""
        return self.cancelled or self.failure is not None

    def state_dict(self) -> dict:
        """Where the run is in its data (the prompt order's position) and in its group ids."""
        if self._ahead is not None:
            raise RuntimeError(
                "RolloutStage.state_dict while a batch is generating ahead: wait_ahead() first"
            )
        ready = self._ahead_result
        return {
            "data_order": self.order.state_dict(),
            "next_group": self._next_group,
            "spare_prompts": list(self._spare_prompts),
            # max_staleness=1: the next step's batch, generated with the previous weights, saved whole so
            # that a resumed run trains on exactly it (those weights are not in the checkpoint)
            "ready_batch": _batch_to_dict(ready) if isinstance(ready, StepBatch) else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["data_order"])
        self._next_group = state["next_group"]
        self._spare_prompts = list(state.get("spare_prompts", []))  # absent before over-sampling existed
        ready = state.get("ready_batch")
        self._ahead_result = _batch_from_dict(ready, self.dataset) if ready is not None else None

    # -- rollout.max_staleness=1: generate the next step's batch while this one trains ------------------
    def launch_ahead(self, stats: EntropyStats | None) -> None:
        """Start generating the next step's batch in a thread on the lead (other ranks: nothing), with the
        weights the engine serves now and ``stats``, the latest finished step's entropy statistics. A no-op
        at ``rollout.max_staleness=0``."""
        if self.cfg.rollout.max_staleness == 0 or dist.get_rank() != 0:
            return
        if self._ahead is not None or self._ahead_result is not None:
            raise RuntimeError("launch_ahead: the previous batch generated ahead was not taken yet")

        def work():
            try:
                self._ahead_result = self.collect_on_lead(stats)
            except BaseException as exc:  # handed to the trainer's thread by wait_ahead
                self._ahead_result = exc

        self._ahead = threading.Thread(target=work, name="hapo-rollout-ahead", daemon=True)
        self._ahead.start()

    def wait_ahead(self) -> None:
        """Block until the batch generating ahead is complete (the weight sync waits for it: sync policy
        "wait", so no request is in flight when the weights change); re-raise its error, if any."""
        if self._ahead is None:
            return
        self._ahead.join()
        self._ahead = None
        if isinstance(self._ahead_result, BaseException):
            exc, self._ahead_result = self._ahead_result, None
            raise exc

    def finish_ahead(self) -> bool:
        """:meth:`wait_ahead` on the lead, while the other ranks wait for it (collective, on the lead group).
        False on every rank once a stop cancelled the rollouts (:meth:`cancel`) or the batch generating ahead
        failed (:attr:`failure`): that batch is dropped, and the run ends after this step without a weight sync
        (the engine shuts down; its servers may have received the signal too, or be what failed)."""
        cancelled = False
        if dist.get_rank() == 0:
            try:
                self.wait_ahead()
            except RolloutCancelled:
                logger.warning("the stop cancelled the next step's rollout (generating ahead); a resumed run "
                               "generates that batch anew, from this step's weights")  # fmt: skip
            except Exception as exc:
                self.record_failure(exc)
            cancelled = self.engine.cancelled.is_set()
        self.cancelled = self.cancelled or bool(max_over_ranks(int(cancelled)))
        self.agree_on_failure()
        return not self.ended

    def agree_on_failure(self) -> None:
        """Collective (on the lead group): whether something failed on the lead since the last agreement (the
        batch generating ahead, the weight sync into the engine, an evaluation: :meth:`record_failure`); every
        rank then has :attr:`failure`, and the loop saves the last completed step and raises."""
        if max_over_ranks(int(self.failure is not None)) and self.failure is None:
            self.failure = RolloutFailed(
                "rank 0's rollout, weight sync or evaluation failed; rank 0's log has the details"
            )

    def record_failure(self, exc: Exception, what: str = "rollout") -> RolloutFailed:
        """The lead's ``what`` raised ``exc``: keep it (the loop raises it once the last completed step is
        saved); returns what the other ranks raise."""
        logger.error("the %s failed (%s: %s): the run saves its last completed step and stops", what,
                     type(exc).__name__, exc)  # fmt: skip
        self.failure = exc
        return RolloutFailed(
            f"rank 0's {what} failed ({type(exc).__name__}: {exc}); rank 0's log has the details"
        )

    # -- a stop (trainer/shutdown.py) --------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the rollout in progress and every later one (the lead's engine: any thread). The rollout's
        responses are dropped and its data position rewound (:meth:`collect_on_lead`): a resumed run
        generates that batch anew. An evaluation in progress is cancelled too."""
        if self.engine is not None:
            self.engine.cancel()

    def _position(self) -> tuple:
        """Where the rollout stage is in the data (what a rollout advances)."""
        return self.order.state_dict(), self._next_group, list(self._spare_prompts)

    def _rewind(self, position: tuple) -> None:
        order, self._next_group, spare = position
        self.order.load_state_dict(order)
        self._spare_prompts = list(spare)

    def params(self, stats: EntropyStats | None, group_ids: range | None = None) -> GenerationParams:
        """Sampling parameters of the prompts with these group ids (their seeds under rollout.seeded_sampling)."""
        s, algo = self.cfg.sampling.train, self.cfg.algorithm
        adaptive = None
        if algo.adaptive_temperature.enable:
            adaptive = AdaptiveTemperature(stats, tau=algo.adaptive_temperature.tau)
        return GenerationParams(
            n=s.n,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            stop=tuple(self.cfg.rollout.stop),
            adaptive_temperature=adaptive,
            return_routed_experts=algo.rollout_routing_replay,
            seeds=(
                tuple(sample_seed(self.cfg.trainer.seed, g) for g in group_ids)
                if self.cfg.rollout.seeded_sampling and group_ids is not None
                else None
            ),
        )

    def _generate_and_score(self, stats: EntropyStats | None) -> StepBatch:
        prompts = self.dataset.batch(self.order.next_batch())
        params = self.params(stats, range(self._next_group, self._next_group + len(prompts)))
        samples = self.engine.generate([p.prompt_ids for p in prompts], params)
        group_ids = [self._next_group + s.prompt_index for s in samples]
        self._next_group += len(prompts)
        assert len(samples) == len(prompts) * self.cfg.sampling.train.n
        return self._score(samples, [prompts[s.prompt_index] for s in samples], group_ids)

    def _score(self, samples, per_response, group_ids: list[int]) -> StepBatch:
        """Rewards (and overlong shaping) of ``samples``; ``per_response``: the prompt of each."""
        texts = self.tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
        requests = [
            ScoreRequest(p.data_source, text, p.ground_truth, dict(p.extra_info))
            for p, text in zip(per_response, texts, strict=True)
        ]
        scored = self.scorer.score(requests)
        results = scored.results
        ov = self.cfg.reward.overlong
        if ov.enable:
            lengths = [len(s.response_ids) for s in samples]
            results = apply_overlong(
                results, lengths, self.cfg.rollout.max_new_tokens, ov.buffer_len, ov.penalty_factor
            )
        return StepBatch(
            samples, per_response, group_ids, [float(r["score"]) for r in results], [bool(r["acc"]) for r in results],
            extra_metrics=scored.metrics("reward/"),
        )  # fmt: skip

    def _take_prompts(self, count: int) -> list[int]:
        """``count`` prompt indices in data order (whole order batches; the rest waits for the next call)."""
        while len(self._spare_prompts) < count:
            self._spare_prompts += self.order.next_batch()
        taken, self._spare_prompts = self._spare_prompts[:count], self._spare_prompts[count:]
        return taken

    def _collect_over_sampled(self, stats: EntropyStats | None) -> tuple[StepBatch, dict[str, float]]:
        """Dynamic sampling by over-sampling (``algorithm.dynamic_sampling.over_sample`` = f > 1): submit
        ceil(f x groups still missing) prompts at once, score every group as it completes, keep the mixed
        ones until the step has ``train_batch_size``, abort the rest (SGLang's abort). Rounds repeat only
        while groups are missing, bounded by ``max_num_gen_batches`` x ``train_batch_size`` prompts."""
        cfg_ds = self.cfg.algorithm.dynamic_sampling
        want = self.cfg.data.train_batch_size
        bound = cfg_ds.max_num_gen_batches * want  # prompts; 0 = unlimited
        kept: list[StepBatch] = []
        raw: list[StepBatch] = []
        submitted = rounds = aborted = discarded = tokens = 0
        while len(kept) < want:
            count = math.ceil((want - len(kept)) * cfg_ds.over_sample)
            if bound:
                count = min(count, bound - submitted)
            if count <= 0:
                raise DynamicSamplingError(
                    f"dynamic sampling kept {len(kept)} of the {want} groups a step needs after submitting "
                    f"{submitted} prompts in {rounds} over-sampled rounds (bound: algorithm.dynamic_sampling."
                    f"max_num_gen_batches={cfg_ds.max_num_gen_batches} x data.train_batch_size={want} prompts): "
                    "almost every group is all-correct or all-wrong. Raise max_num_gen_batches, set it to 0 "
                    "(unlimited), or disable algorithm.dynamic_sampling"
                )
            prompts = self.dataset.batch(self._take_prompts(count))
            first = self._next_group
            self._next_group += count
            params = self.params(stats, range(first, first + count))

            def accept(i: int, samples: list, prompts=prompts, first=first) -> bool:
                group = self._score(samples, [prompts[i]] * len(samples), [first + i] * len(samples))
                raw.append(group)
                if dynamic_sampling_filter(_bool_tensor(group.accs), group.group_ids).kept_groups:
                    kept.append(group)
                return len(kept) >= want

            report = self.engine.generate_groups([p.prompt_ids for p in prompts], params, accept)
            # prompts the fleet never sent (the step filled first) go back to the front of the spares: drawn
            # from the order but unseen, they would be skipped for the rest of the epoch
            self._spare_prompts[:0] = [prompts[i].index for i in sorted(report.never_sent)]
            submitted += count
            rounds += 1
            aborted += report.aborted
            discarded += report.discarded
            tokens += report.generated_tokens
        batch = kept[0]
        for g in kept[1:]:
            batch = batch.concat(g)
        dropped_tokens = sum(_tokens(g) for g in raw) - _tokens(batch)
        n = self.cfg.sampling.train.n
        raw_n = sum(len(g) for g in raw)
        metrics = _combined_metrics(raw)
        metrics.update({
            "dynamic_sampling/raw_acc_mean": sum(sum(g.accs) for g in raw) / max(raw_n, 1),
            "dynamic_sampling/raw_reward_mean": sum(sum(g.scores) for g in raw) / max(raw_n, 1),
            "dynamic_sampling/gen_batches": float(rounds),
            "dynamic_sampling/aborted_groups": float(aborted),
            # responses the servers worked on (aborted ones included) per kept response
            "dynamic_sampling/generated_per_kept": (raw_n + (aborted + discarded) * n) / len(batch),
            "dynamic_sampling/generated_tokens_per_kept_group": tokens / want,
            "dynamic_sampling/dropped_tokens_per_kept_group": dropped_tokens / want,
        })  # fmt: skip
        return batch, metrics

    def collect(self, stats: EntropyStats | None) -> StepBatch | None:
        """The step's batch on every rank (collective: the others wait for rank 0 on the lead group,
        ``parallel/lead.py``): the one generated ahead during the last step if there is one, else generated now
        with ``stats``. None on every rank when a stop cancelled the rollout (:meth:`cancel`) or it failed
        (:attr:`failure`; the data position is then the one from before it)."""
        mine = full = None
        if dist.get_rank() == 0:
            t0 = time.perf_counter()
            try:
                self.wait_ahead()
                ready, self._ahead_result = self._ahead_result, None  # generated ahead during the last step
                batch = ready if ready is not None else self.collect_on_lead(stats)
                full = batch.compact()  # every rank, the lead too, trains on the compact form
                # routed experts (routing replay) stay on the lead: each rank gets only its share, in learn()
                mine = (full.without_routed_experts(), self.order.state_dict())
            except RolloutCancelled:
                logger.warning(
                    "the stop cancelled the rollout after %.1f s; a resumed run generates this batch anew",
                    time.perf_counter() - t0,
                )
            except Exception as exc:
                mine = self.record_failure(exc)  # the engine, the scorer, dynamic sampling: save, then raise
        received = broadcast_from_lead(mine)  # the others wait for the rollout on the lead group
        if received is None:
            self.cancelled = True
            return None
        if isinstance(received, RolloutFailed):
            self.failure = self.failure or received  # the lead keeps its own error
            return None
        batch, order_state = received
        self.order.load_state_dict(order_state)  # every rank's data order in step (checkpoints)
        return full if full is not None else batch

    def collect_on_lead(self, stats: EntropyStats | None) -> StepBatch:
        """Generate, score and filter one step's batch (the lead). A cancelled or failed rollout raises
        (:class:`RolloutCancelled`, or its error) with the data position rewound to where the rollout began."""
        start = self._position()
        try:
            return self._collect(stats)
        except BaseException:
            self._rewind(start)
            raise

    def _collect(self, stats: EntropyStats | None) -> StepBatch:
        t0 = time.perf_counter()
        cfg_ds = self.cfg.algorithm.dynamic_sampling
        want = self.cfg.data.train_batch_size
        if cfg_ds.enable and cfg_ds.over_sample > 1:
            batch, metrics = self._collect_over_sampled(stats)
            batch.extra_metrics = _rollout_metrics(metrics, batch, want, time.perf_counter() - t0)
            return batch
        batch = self._generate_and_score(stats)
        generated = [batch]  # every generation batch, refills included: the scorer's reward/* cover them all
        gen_batches, raw_n, tokens, dropped_tokens = 1, len(batch), _tokens(batch), 0
        if cfg_ds.enable:
            kept_batch: StepBatch | None = None
            raw_acc, raw_reward, raw_n, kept_groups = 0.0, 0.0, 0, 0
            while True:
                raw_acc += sum(batch.accs)
                raw_reward += sum(batch.scores)
                raw_n += len(batch)
                res = dynamic_sampling_filter(_bool_tensor(batch.accs), batch.group_ids)
                kept = batch.select(res.keep.tolist())
                dropped_tokens += _tokens(batch) - _tokens(kept)
                kept_batch = kept if kept_batch is None else kept_batch.concat(kept)
                kept_groups += res.kept_groups
                if kept_groups >= want:
                    break
                limit = cfg_ds.max_num_gen_batches
                if limit and gen_batches >= limit:
                    raise DynamicSamplingError(
                        f"dynamic sampling kept {kept_groups} of the {want} groups a step needs after "
                        f"{gen_batches} generation batches (algorithm.dynamic_sampling.max_num_gen_batches="
                        f"{limit}): almost every group is all-correct or all-wrong. Raise max_num_gen_batches, "
                        "set it to 0 (unlimited), or disable algorithm.dynamic_sampling"
                    )
                batch = self._generate_and_score(stats)
                generated.append(batch)
                tokens += _tokens(batch)
                gen_batches += 1
            batch = kept_batch.first_groups(want)
        metrics = _combined_metrics(generated)
        if cfg_ds.enable:
            # over everything generated (reward/* and acc/* describe the kept groups only)
            metrics["dynamic_sampling/raw_acc_mean"] = raw_acc / max(raw_n, 1)
            metrics["dynamic_sampling/raw_reward_mean"] = raw_reward / max(raw_n, 1)
        metrics["dynamic_sampling/gen_batches"] = float(gen_batches)
        metrics["dynamic_sampling/generated_per_kept"] = raw_n / len(batch)
        metrics["dynamic_sampling/generated_tokens_per_kept_group"] = tokens / want
        metrics["dynamic_sampling/dropped_tokens_per_kept_group"] = dropped_tokens / want
        batch.extra_metrics = _rollout_metrics(metrics, batch, want, time.perf_counter() - t0)
        return batch


def version_lag(batch: StepBatch, step: int) -> float:
    """``rollout/staleness``: mean over the batch's responses of (weights step ``step`` trains from, i.e.
    ``step - 1``) minus (the step whose weights generated the response, from its ``weight_version``)."""
    lags = []
    for s in batch.samples:
        version = s.weight_version
        if not version.startswith("step-") or not version[5:].isdigit():
            raise ValueError(
                f"response weight_version {version!r} is not 'step-<N>': the engine serves weights this "
                "trainer did not push (every sync sets the version to step-<step>)"
            )
        lags.append(step - 1 - int(version[5:]))
    return sum(lags) / max(len(lags), 1)


def _batch_to_dict(batch: StepBatch) -> dict:
    """JSON-ready: prompts by dataset index (the dataset rebuilds them), everything else as is."""
    return {
        "samples": [asdict(s) for s in batch.samples],
        "prompt_index": [p.index for p in batch.prompts],
        "group_ids": batch.group_ids,
        "scores": batch.scores,
        "accs": batch.accs,
        "extra_metrics": batch.extra_metrics,
    }


def _batch_from_dict(d: dict, dataset: PromptDataset) -> StepBatch:
    return StepBatch(
        [RolloutSample(**s) for s in d["samples"]], dataset.batch(d["prompt_index"]), list(d["group_ids"]),
        list(d["scores"]), list(d["accs"]), dict(d["extra_metrics"]),
    )  # fmt: skip


def _combined_metrics(batches: list[StepBatch]) -> dict[str, float]:
    """The scorer's metrics (``reward/*``) of several scored batches as one: counters and seconds summed,
    ``*_mean`` weighted by each batch's responses."""
    total = sum(len(b) for b in batches)
    return {
        k: sum(b.extra_metrics[k] * len(b) for b in batches) / max(total, 1)
        if k.endswith("_mean")
        else sum(b.extra_metrics[k] for b in batches)
        for k in batches[0].extra_metrics
    }


def _tokens(batch: StepBatch) -> int:
    return sum(len(s.response_ids) for s in batch.samples)


def _rollout_metrics(
    metrics: dict[str, float], batch: StepBatch, want: int, seconds: float
) -> dict[str, float]:
    """The step's rollout metrics with

    * ``dynamic_sampling/kept_tokens_per_group``: what an ideal filter (one that generated only the kept groups)
      would have generated per group; divide ``generated_tokens_per_kept_group`` by it for the cost. With
      ``dropped_tokens_per_kept_group`` (the all-equal groups scored and dropped), kept + dropped is what any
      filter on finished groups pays for the groups it saw; the rest of ``generated`` is the method's own
      overhead (refill: kept groups beyond the batch; over-sampling: aborted and late groups);
    * ``time/rollout_s``: the rollout's ``seconds`` (generation and scoring);
    * ``perf/rollout_tokens_per_s``: every response token the engine generated for the step (dropped groups and
      aborted requests included) per second of the rollout: the engine's throughput as the trainer sees it."""
    generated = metrics["dynamic_sampling/generated_tokens_per_kept_group"] * want
    return dict(
        metrics,
        **{
            "dynamic_sampling/kept_tokens_per_group": _tokens(batch) / want,
            "time/rollout_s": seconds,
            "perf/rollout_tokens_per_s": generated / max(seconds, 1e-9),
        },
    )


def _bool_tensor(values: list[bool]):
    import torch

    return torch.tensor(values, dtype=torch.bool)
