"""Rollout stage: generate n responses per prompt (HAPO adaptive temperature from the previous step's
statistics), score them, apply DAPO dynamic sampling, and hand the same :class:`StepBatch` to every rank.

Only the lead rank (global rank 0) owns the SGLang engine and the scorer pool; the other ranks receive
the batch by ``broadcast_object_list``.
"""

from __future__ import annotations

import logging
import time

import torch.distributed as dist

from megatron_hapo.algorithms import EntropyStats, dynamic_sampling_filter
from megatron_hapo.config import RootConfig
from megatron_hapo.data import PromptDataset, ResumableSampler
from megatron_hapo.rewards import ScoreRequest, ScorerPool, apply_overlong
from megatron_hapo.rollout import GenerationParams, InProcessSGLangEngine
from megatron_hapo.trainer.batch import StepBatch

logger = logging.getLogger(__name__)


class DynamicSamplingError(RuntimeError):
    """Dynamic sampling could not fill a step within algorithm.dynamic_sampling.max_num_gen_batches."""


def make_engine(cfg: RootConfig) -> InProcessSGLangEngine:
    """The rollout engine of ``cfg.rollout`` (in-process only for now: a fleet is an explicit error)."""
    if cfg.rollout.engine != "inprocess":
        raise NotImplementedError(
            "rollout.engine=fleet is not wired into the trainer yet; use rollout.engine=inprocess"
        )
    extra = {} if cfg.model.load_weights else {"load_format": "dummy"}  # real weights arrive by sync
    return InProcessSGLangEngine(
        cfg.model.hf_path,
        hapo_sampler=cfg.algorithm.adaptive_temperature.enable,  # responses must then carry hapo_* per token
        tp_size=cfg.rollout.tensor_parallel_size,
        seed=cfg.trainer.seed,
        dtype=cfg.model.dtype,
        **extra,
    )


class RolloutStage:
    """generate -> score -> (dynamic sampling, refill) for one step. ``engine``/``scorer`` only on the lead."""

    def __init__(self, cfg, dataset: PromptDataset, sampler: ResumableSampler, tokenizer, engine, scorer):
        self.cfg, self.dataset, self.sampler, self.tokenizer = cfg, dataset, sampler, tokenizer
        self.engine: InProcessSGLangEngine | None = engine
        self.scorer: ScorerPool | None = scorer
        self._next_group = 0

    def params(self, stats: EntropyStats | None) -> GenerationParams:
        s, algo = self.cfg.sampling.train, self.cfg.algorithm
        sampler_params = None
        if algo.adaptive_temperature.enable:
            from sglang_ext import hapo_sampling_params

            sampler_params = hapo_sampling_params(stats, tau=algo.adaptive_temperature.tau)
        return GenerationParams(
            n=s.n,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            stop=tuple(self.cfg.rollout.stop),
            sampler_params=sampler_params,
        )

    def _generate_and_score(self, stats: EntropyStats | None) -> StepBatch:
        prompts = self.dataset.batch(self.sampler.next_batch())
        n = self.cfg.sampling.train.n
        samples = self.engine.generate([p.prompt_ids for p in prompts], self.params(stats))
        per_response = [prompts[s.prompt_index] for s in samples]
        group_ids = [self._next_group + s.prompt_index for s in samples]
        self._next_group += len(prompts)
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
        assert len(samples) == len(prompts) * n
        return StepBatch(
            samples, per_response, group_ids, [float(r["score"]) for r in results], [bool(r["acc"]) for r in results],
            extra_metrics=scored.metrics("reward/"),
        )  # fmt: skip

    def collect(self, stats: EntropyStats | None) -> StepBatch:
        """The step's batch on every rank (collective over the default group when it has several ranks)."""
        box: list = [None]
        if dist.get_rank() == 0:
            box[0] = (self._collect_lead(stats), self.sampler.state_dict())
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        batch, sampler_state = box[0]
        self.sampler.load_state_dict(sampler_state)  # every rank's sampler in step (checkpoints)
        return batch

    def _collect_lead(self, stats: EntropyStats | None) -> StepBatch:
        t0 = time.perf_counter()
        cfg_ds = self.cfg.algorithm.dynamic_sampling
        want = self.cfg.data.train_batch_size
        batch = self._generate_and_score(stats)
        metrics = dict(batch.extra_metrics)
        gen_batches = 1
        if cfg_ds.enable:
            kept_batch: StepBatch | None = None
            raw_acc, raw_n, kept_groups = 0.0, 0, 0
            while True:
                raw_acc += sum(batch.accs)
                raw_n += len(batch)
                res = dynamic_sampling_filter(_bool_tensor(batch.accs), batch.group_ids)
                kept = batch.select(res.keep.tolist())
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
                gen_batches += 1
            batch = kept_batch.first_groups(want)
            metrics["dynamic_sampling/raw_acc_mean"] = raw_acc / max(raw_n, 1)
        metrics["dynamic_sampling/gen_batches"] = float(gen_batches)
        metrics["time/rollout_s"] = time.perf_counter() - t0
        batch.extra_metrics = metrics
        return batch


def _bool_tensor(values: list[bool]):
    import torch

    return torch.tensor(values, dtype=torch.bool)
