"""Dynamic sampling by over-sampling (``algorithm.dynamic_sampling.over_sample``) on the real rollout stage:
a one-server SGLang fleet on CPU (the session's ``served_policy``, attached to by address), the SFT-warmed tiny
policy, the bundled task's prompts and the real scorer pool. The step's batch has exactly ``train_batch_size``
mixed groups, none of them aborted, and a step that cannot be filled within the bound fails with an error naming
it."""

from __future__ import annotations

import dataclasses

import pytest
import torch.distributed as dist
from transformers import AutoTokenizer

from megatron_hapo.config import load_config
from megatron_hapo.data import PromptDataset, PromptOrder
from megatron_hapo.rewards import ScorerPool
from megatron_hapo.trainer.rollout_stage import DynamicSamplingError, RolloutStage, make_engine
from tests.fleet_utils import SERVE_CONFIG, SERVE_KEY
from tests.torchrun_utils import REPO_ROOT

pytestmark = pytest.mark.slow

WANT, N = 4, 4


def _cfg(model, url, *extra):
    return load_config(
        REPO_ROOT / SERVE_CONFIG,
        [
            f"model.hf_path={model}", "rollout.engine=fleet", f"rollout.server_addresses=[{url}]",
            "rollout.num_servers=1", "rollout.startup_timeout_s=400", "rollout.request_timeout_s=300",
            "algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.over_sample=2",
            "algorithm.adaptive_temperature.enable=false", f"data.train_batch_size={WANT}",
            "data.mini_batch_size=2", "data.micro_batch_size=2", f"sampling.train.n={N}", *extra,
        ],
        world_size=1,
    )  # fmt: skip


@pytest.fixture(scope="module")
def parts(small_policy, served_policy, tmp_path_factory):
    cfg = _cfg(small_policy, served_policy.url)
    tokenizer = AutoTokenizer.from_pretrained(small_policy)
    dataset = PromptDataset.from_config(cfg.data, tokenizer, scorer=cfg.reward.scorer)
    scorer = ScorerPool.from_config(cfg.reward)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HAPO_ROLLOUT_API_KEY", SERVE_KEY)  # rollout.api_key_env: the served fleet's key
        engine = make_engine(cfg, tmp_path_factory.mktemp("run"))
    engine.update_weights_from_disk(str(small_policy))  # whatever weights the tests before it synced there
    yield cfg, tokenizer, dataset, scorer, engine
    engine.shutdown()
    scorer.close()


def _stage(parts, cfg):
    _, tokenizer, dataset, scorer, engine = parts
    order = PromptOrder(len(dataset), cfg.data.train_batch_size, seed=cfg.data.seed)
    return RolloutStage(cfg, dataset, order, tokenizer, engine, scorer)


def test_over_sampling_fills_the_step_with_mixed_groups_and_no_aborted_response(parts):
    cfg = parts[0]
    stage = _stage(parts, cfg)
    for _ in range(2):
        batch = stage.collect_on_lead(None)
        groups = sorted(set(batch.group_ids))
        assert len(groups) == WANT and len(batch) == WANT * N
        for g in groups:
            accs = [a for a, gid in zip(batch.accs, batch.group_ids, strict=True) if gid == g]
            assert len(accs) == N and 0 < sum(accs) < N  # only mixed groups reach the loss
        # an aborted response (cut short by the abort) never reaches the loss
        assert all(s.finish_reason in ("stop", "length") for s in batch.samples)
        m = batch.extra_metrics
        assert m["dynamic_sampling/generated_per_kept"] >= 1.0
        # generated = kept + dropped (scored all-equal groups) + aborted and late work
        assert m["dynamic_sampling/dropped_tokens_per_kept_group"] >= 0
        assert (
            m["dynamic_sampling/generated_tokens_per_kept_group"]
            >= m["dynamic_sampling/kept_tokens_per_group"]
            + m["dynamic_sampling/dropped_tokens_per_kept_group"]
        )
        assert m["dynamic_sampling/gen_batches"] >= 1
        # one round submits ceil(2 x 4) = 8 prompts; never a whole refill batch per missing group
        assert stage.state_dict()["next_group"] <= 2 * WANT * m["dynamic_sampling/gen_batches"] * 2
    # prompts drawn from the order but not yet submitted are part of the checkpointed state
    state = stage.state_dict()
    restored = _stage(parts, cfg)
    restored.load_state_dict(state)
    assert restored.state_dict() == state


def test_prompts_the_fleet_never_sent_are_kept_for_the_next_round(parts):
    """One request at a time: the step fills before most of a round's prompts are sent. Those go back to the
    front of the spare prompts (drawn from the order, never answered), and the next step submits them first;
    they were skipped for the rest of the epoch."""
    cfg, _, _, _, engine = parts
    sampling = dataclasses.replace(cfg.algorithm.dynamic_sampling, over_sample=8)  # 32 prompts a round
    cfg = dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, dynamic_sampling=sampling))
    stage = _stage(parts, cfg)
    config = engine.config
    engine.config = dataclasses.replace(config, max_concurrent_requests=1)
    try:
        batch = stage.collect_on_lead(None)
        used = {p.index for p in batch.prompts}
        spare = stage.state_dict()["spare_prompts"]
        assert spare and not used & set(spare)
        submitted_next = []
        original = engine.generate_groups
        engine.generate_groups = lambda prompts, *a: submitted_next.append(prompts) or original(prompts, *a)
        stage.collect_on_lead(None)
    finally:
        engine.config = config
        vars(engine).pop("generate_groups", None)
    first_round = submitted_next[0]
    assert [list(p) for p in first_round[: len(spare)]] == [list(stage.dataset[i].prompt_ids) for i in spare]


def test_over_sampling_fails_clearly_when_the_bound_is_reached(parts):
    # one-token responses never hold an "Answer:" line: every group is all-wrong, none can be kept
    cfg = parts[0]
    cfg = dataclasses.replace(
        cfg,
        rollout=dataclasses.replace(cfg.rollout, max_new_tokens=1),
        reward=dataclasses.replace(
            cfg.reward, overlong=dataclasses.replace(cfg.reward.overlong, enable=False)
        ),
        algorithm=dataclasses.replace(
            cfg.algorithm,
            dynamic_sampling=dataclasses.replace(cfg.algorithm.dynamic_sampling, max_num_gen_batches=2),
        ),
    )
    stage = _stage(parts, cfg)
    before = stage.state_dict()
    # exactly the bound's prompts were submitted, no more
    with pytest.raises(DynamicSamplingError, match=rf"after submitting {2 * WANT} prompts.*max_num_gen_batches=2 x "
                       "data.train_batch_size=4"):  # fmt: skip
        stage.collect_on_lead(None)
    assert stage.state_dict() == before  # the run saves its last step: its resume draws these prompts again
    assert not dist.is_initialized()
