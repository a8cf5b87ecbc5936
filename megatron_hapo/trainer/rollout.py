"""Rollout stage: generate n responses per prompt (HAPO adaptive temperature from the previous step's
statistics), score them, apply DAPO dynamic sampling, and hand the same :class:`StepBatch` to every rank.

Only the lead rank (global rank 0) owns the SGLang engine and the scorer pool; the other ranks receive
the batch by ``broadcast_object_list``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from megatron_hapo.algorithms import EntropyStats, dynamic_sampling_filter
from megatron_hapo.config import RootConfig
from megatron_hapo.config.errors import HapoError
from megatron_hapo.console import engine_log_file
from megatron_hapo.data import PromptDataset, PromptOrder
from megatron_hapo.rewards import ScoreRequest, ScorerPool, apply_overlong
from megatron_hapo.rollout import GenerationParams, InProcessSGLangEngine
from megatron_hapo.rollout.serving import engine_server_args, rollout_model_path
from megatron_hapo.rollout.types import AdaptiveTemperature, RolloutEngine, sample_seed
from megatron_hapo.trainer.batch import StepBatch

if TYPE_CHECKING:
    from megatron_hapo.rollout.fleet import SGLangFleet

logger = logging.getLogger(__name__)


class DynamicSamplingError(HapoError, RuntimeError):
    """Dynamic sampling could not fill a step within algorithm.dynamic_sampling.max_num_gen_batches."""


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
        return builders[cfg.rollout.engine](cfg, run_dir)
    finally:
        random.setstate(seeded)


def uses_hapo_sampler(cfg: RootConfig) -> bool:
    """The HAPO sampler serves adaptive temperatures and per-request seeds (stock SGLang honours seeds
    only in its deterministic mode, which CPU and the HAPO sampler cannot use)."""
    return cfg.algorithm.adaptive_temperature.enable or cfg.rollout.seeded_sampling


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
    ``server_addresses`` / ``router_address``."""
    from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet
    from megatron_hapo.rollout.placement import server_gpus as server_gpus_for

    r = cfg.rollout
    args = engine_server_args(cfg)
    server_gpus = None
    if torch.cuda.is_available():  # on CPU, cpu_server_args() sizes the KV cache
        args["mem_fraction_static"] = r.mem_fraction
        if r.launch_servers:  # each server on GPUs of its own, after the training ranks of this node
            training_gpus = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
            per_server = r.gpus_per_server or r.tensor_parallel_size
            placed = server_gpus_for(r.num_servers, per_server, torch.cuda.device_count(), training_gpus)
            server_gpus = tuple(tuple(g) for g in placed)
    fleet_cfg = FleetConfig(
        model_path=rollout_model_path(cfg, run_dir),
        num_servers=r.num_servers,
        attach_urls=() if r.launch_servers else tuple(r.server_addresses),
        router_url=None if r.launch_servers else r.router_address,
        tp_size=r.tensor_parallel_size,
        startup_timeout_s=r.startup_timeout_s,
        request_timeout_s=r.request_timeout_s,
        max_retries=r.max_retries,
        on_server_failure=r.on_server_failure,
        hapo_sampler=uses_hapo_sampler(cfg),
        progress=False,
        log_dir=str(Path(run_dir) / "fleet_logs") if run_dir is not None else None,
        seed=cfg.trainer.seed,
        server_args=args,
        host=r.bind_host,
        sync_timeout_s=r.sync_timeout_s,
        server_gpus=server_gpus,
        api_key=os.environ.get(r.api_key_env) or None,  # the key itself never enters the config
    )
    return SGLangFleet(fleet_cfg)


class RolloutStage:
    """generate -> score -> (dynamic sampling, refill) for one step. ``engine``/``scorer`` only on the lead."""

    def __init__(self, cfg, dataset: PromptDataset, order: PromptOrder, tokenizer, engine, scorer):
        self.cfg, self.dataset, self.order, self.tokenizer = cfg, dataset, order, tokenizer
        self.engine: RolloutEngine | None = engine
        self.scorer: ScorerPool | None = scorer
        self._next_group = 0  # group id of the next prompt generated (it seeds that prompt's samples)

    def state_dict(self) -> dict:
        """Where the run is in its data (the prompt order's position) and in its group ids."""
        return {"data_order": self.order.state_dict(), "next_group": self._next_group}

    def load_state_dict(self, state: dict) -> None:
        self.order.load_state_dict(state["data_order"])
        self._next_group = state["next_group"]

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
            seeds=(
                tuple(sample_seed(self.cfg.trainer.seed, g) for g in group_ids)
                if self.cfg.rollout.seeded_sampling and group_ids is not None
                else None
            ),
        )

    def _generate_and_score(self, stats: EntropyStats | None) -> StepBatch:
        prompts = self.dataset.batch(self.order.next_batch())
        n = self.cfg.sampling.train.n
        params = self.params(stats, range(self._next_group, self._next_group + len(prompts)))
        samples = self.engine.generate([p.prompt_ids for p in prompts], params)
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
            box[0] = (self.collect_on_lead(stats), self.order.state_dict())
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        batch, order_state = box[0]
        self.order.load_state_dict(order_state)  # every rank's data order in step (checkpoints)
        return batch

    def collect_on_lead(self, stats: EntropyStats | None) -> StepBatch:
        t0 = time.perf_counter()
        cfg_ds = self.cfg.algorithm.dynamic_sampling
        want = self.cfg.data.train_batch_size
        batch = self._generate_and_score(stats)
        metrics = dict(batch.extra_metrics)
        gen_batches = 1
        if cfg_ds.enable:
            kept_batch: StepBatch | None = None
            raw_acc, raw_reward, raw_n, kept_groups = 0.0, 0.0, 0, 0
            while True:
                raw_acc += sum(batch.accs)
                raw_reward += sum(batch.scores)
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
            # over everything generated (reward/* and acc/* describe the kept groups only)
            metrics["dynamic_sampling/raw_acc_mean"] = raw_acc / max(raw_n, 1)
            metrics["dynamic_sampling/raw_reward_mean"] = raw_reward / max(raw_n, 1)
        metrics["dynamic_sampling/gen_batches"] = float(gen_batches)
        metrics["time/rollout_s"] = time.perf_counter() - t0
        batch.extra_metrics = metrics
        return batch


def _bool_tensor(values: list[bool]):
    import torch

    return torch.tensor(values, dtype=torch.bool)
