"""Trainer components without Megatron or SGLang: the Experience layout, temperatures, advantages, dynamic sampling,
checkpoint discovery, presets, metrics formatting."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from megatron_hapo.config import load_config
from megatron_hapo.config.presets import preset_names, preset_overrides
from megatron_hapo.data import PromptOrder, PromptSample
from megatron_hapo.rewards import Score
from megatron_hapo.rollout import EngineError, RolloutCancelled, RolloutSample
from megatron_hapo.trainer import compute_advantages, manifest
from megatron_hapo.trainer.batch import StepBatch, response_temperatures
from megatron_hapo.trainer.checkpoint import STATE_FILE, CheckpointInvalid, list_checkpoints, select
from megatron_hapo.trainer.experience import Experience
from megatron_hapo.trainer.metrics import RunLogger, format_duration, format_header, format_row
from megatron_hapo.trainer.rollout_stage import DynamicSamplingError, RolloutStage
from megatron_hapo.trainer.setup import close_run

CONFIG = "examples/configs/tiny_cpu.yaml"
# rollout.max_staleness=1 (the batch of the next step generates ahead) and what it requires
AHEAD = (
    "rollout.engine=fleet",
    "rollout.launch_servers=true",
    "rollout.max_staleness=1",
    "algorithm.loss.tis_cap=2.0",
)


def _sample(p, j, prompt, response, temps=None, pi=0):
    return RolloutSample(
        prompt_index=pi, sample_index=j, prompt_ids=prompt, response_ids=response,
        logprobs=[-0.5] * len(response), finish_reason="stop", weight_version="v", temperatures=temps,
    )  # fmt: skip


def _cfg(*overrides):
    return load_config(CONFIG, list(overrides), world_size=1, check_env=False)


def test_experience_layout_and_micro_batch_views():
    s = [_sample(0, 0, [5, 6, 7], [8, 9], [0.9, 1.1]), _sample(0, 1, [5, 6], [4], [1.0])]
    exp = Experience.build(s, [x.temperatures for x in s], [0.5, -1.0], [0, 0], [3, 7])
    assert exp.offsets.tolist() == [0, 5, 8] and exp.pad_slot == 8 and exp.step_index == [3, 7]
    # flat: response token k of a prompt of length P is predicted at offset + P - 1 + k
    assert exp.tokens.tolist() == [5, 6, 7, 8, 9, 5, 6, 4, 0]
    assert exp.targets.tolist() == [6, 7, 8, 9, 0, 6, 4, 0, 0]
    assert exp.mask.tolist() == [0, 0, 1, 1, 0, 0, 1, 0, 0]
    assert exp.advantages.tolist() == [0, 0, 0.5, 0.5, 0, 0, -1.0, 0, 0]
    assert exp.temperature.tolist() == pytest.approx([1, 1, 0.9, 1.1, 1, 1, 1.0, 1, 1])
    mb = exp.micro_batch([1, 0], 6)  # rows in any order, padded to the micro-batch's own length
    assert mb.tokens.tolist() == [[5, 6, 4, 0, 0, 0], [5, 6, 7, 8, 9, 0]]
    assert mb.mask.tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]]
    assert mb.rollout_log_prob[1, 2:4].tolist() == [-0.5, -0.5]
    assert mb.attention_mask is None and mb.position_ids[0].tolist() == list(range(6))  # None: causal
    exp.scatter("old_log_prob", mb, torch.arange(12.0).view(2, 6))
    assert exp.old_log_prob.tolist() == [6, 7, 8, 9, 10, 0, 1, 2, 0]  # padding never written
    empty = exp.micro_batch([], 2)
    assert empty.tokens.shape == (1, 2) and empty.mask.sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        exp.micro_batch([0], 4)


def test_the_compact_batch_pickles_to_arrays_and_builds_the_same_experience():
    """What the lead broadcasts (StepBatch.compact): per-token arrays, exact (int32 ids, float64 values), so
    every rank builds the Experience bit for bit as from the lead's lists; an empty response included."""
    import pickle
    from array import array

    rng = torch.Generator().manual_seed(0)
    samples = []
    for i, (p_len, r_len) in enumerate([(3, 5), (2, 0), (4, 7)]):
        s = _sample(i, 0, torch.randint(0, 151_000, (p_len,), generator=rng).tolist(),
                    torch.randint(0, 151_000, (r_len,), generator=rng).tolist(),
                    (1 + 0.1 * torch.rand(r_len, generator=rng, dtype=torch.float64)).tolist())  # fmt: skip
        s.logprobs = (-torch.rand(r_len, generator=rng, dtype=torch.float64)).tolist()
        samples.append(s)
    batch = StepBatch(samples, [None] * 3, [0, 0, 1], [1.0, -1.0, 0.5], [True, False, True])
    received = pickle.loads(pickle.dumps(batch.compact()))
    assert all(isinstance(s.response_ids, array) and isinstance(s.logprobs, array) for s in received.samples)
    for a, b in zip(received.samples, samples, strict=True):  # exact
        assert (list(a.prompt_ids), list(a.response_ids)) == (b.prompt_ids, b.response_ids)
        assert (list(a.logprobs), list(a.temperatures)) == (b.logprobs, b.temperatures)
    assert samples[0].response_ids == batch.samples[0].response_ids  # the lead's own batch is untouched

    def build(b):
        temps = [response_temperatures(s, "per_token", 1.0, adaptive=True) for s in b.samples]
        return Experience.build(b.samples, temps, [0.5, -1.0, 2.0], b.group_ids, [0, 1, 2])

    lists, arrays = build(batch), build(received)
    for name in ("tokens", "targets", "mask", "temperature", "rollout_log_prob", "advantages", "offsets"):
        assert torch.equal(getattr(lists, name), getattr(arrays, name)), name
    assert lists.tokens.dtype == torch.long and lists.rollout_log_prob.dtype == torch.float32


def test_temperatures_per_token_requires_hapo_outputs():
    s = _sample(0, 0, [1], [2, 3], temps=None)
    with pytest.raises(RuntimeError, match="HAPO sampler"):
        response_temperatures(s, "per_token", 1.0, adaptive=True)
    assert response_temperatures(s, "base", 0.7, adaptive=True) == [0.7, 0.7]
    assert response_temperatures(s, "per_token", 1.0, adaptive=False) == [1.0, 1.0]
    s.temperatures = [0.95, 1.05]
    assert response_temperatures(s, "per_token", 1.0, adaptive=True) == [0.95, 1.05]


def test_advantages_follow_config():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    rewards = torch.tensor([1.0, -1.0, 1.0, -1.0])
    groups = [0, 0, 1, 1]
    tlga = compute_advantages(_cfg(), rewards, mask, groups)
    # TLGA: length-weighted advantages sum to zero per group
    assert float((tlga[:2]).sum()) == pytest.approx(0.0, abs=1e-5)
    grpo = compute_advantages(_cfg("algorithm.adv_estimator=grpo"), rewards, mask, groups)
    assert grpo[0, 0] == pytest.approx(-grpo[1, 0])  # sequence-level, symmetric
    assert float(tlga[0, 0]) != pytest.approx(float(grpo[0, 0]))
    never = compute_advantages(_cfg("algorithm.tlga_fallback_threshold=null"), rewards, mask, groups)
    assert torch.isfinite(never).all()


def test_presets_load_and_map_to_the_loss():
    assert preset_names() == ["dapo", "grpo", "hapo"]
    for name in preset_names():
        cfg = _cfg(*preset_overrides(name))
        lc = cfg.algorithm.loss
        assert cfg.algorithm.name == name
        if name != "hapo":
            assert not lc.adaptive_clip and not lc.adaptive_advantage
            assert not cfg.algorithm.adaptive_temperature.enable
    assert _cfg(*preset_overrides("dapo")).algorithm.loss.clip_high == pytest.approx(0.28)
    with pytest.raises(ValueError, match="unknown preset 'ppo'; presets: dapo, grpo, hapo"):
        preset_overrides("ppo")


class _FakeEngine:
    """Generates n responses per prompt; prompt i answers correctly on samples where acc_fn says so."""

    def __init__(self, acc_fn):
        self.acc_fn, self.calls = acc_fn, 0

    def generate(self, prompts, params):
        self.calls += 1
        out = []
        for i, p in enumerate(prompts):
            for j in range(params.n):
                out.append(_sample(i, j, list(p), [1 if self.acc_fn(self.calls, i, j) else 0], [1.0], pi=i))
        return out


class _FakeTokenizer:
    def batch_decode(self, ids, skip_special_tokens=True):
        return ["right" if x == [1] else "wrong" for x in ids]


class _FakeScorer:
    def score(self, requests):
        class R:
            results = [Score(score=1.0 if r.response == "right" else -1.0, acc=r.response == "right", pred="",
                             timed_out=False) for r in requests]  # fmt: skip

            def metrics(self, prefix):
                return {}

        return R()


class _FakeDataset:
    def batch(self, idx):
        return [PromptSample(i, [100 + i], "math_dapo", "1", {}, "x") for i in idx]


def _stage(cfg, acc_fn):
    order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
    return RolloutStage(cfg, _FakeDataset(), order, _FakeTokenizer(), _FakeEngine(acc_fn), _FakeScorer())


def test_dynamic_sampling_refills_and_trims():
    cfg = _cfg("algorithm.dynamic_sampling.enable=true", "algorithm.adaptive_temperature.enable=false",
               "reward.overlong.enable=false")  # fmt: skip
    # call 1: only even prompts have mixed accuracy (4 of 8 groups); call 2: all mixed
    stage = _stage(cfg, lambda call, i, j: (j == 0) and (call > 1 or i % 2 == 0))
    batch = stage.collect_on_lead(None)
    n = cfg.sampling.train.n
    assert len(batch) == cfg.data.train_batch_size * n
    assert len(set(batch.group_ids)) == cfg.data.train_batch_size
    m = batch.extra_metrics
    assert m["dynamic_sampling/gen_batches"] == 2
    # one-token responses: per kept group, n kept tokens; 4 dropped groups over 8 kept; 16 groups generated
    assert m["dynamic_sampling/kept_tokens_per_group"] == n
    assert m["dynamic_sampling/dropped_tokens_per_kept_group"] == pytest.approx(0.5 * n)
    assert m["dynamic_sampling/generated_tokens_per_kept_group"] == pytest.approx(2 * n)
    for g in set(batch.group_ids):  # every kept group has mixed accuracy
        accs = {a for a, gid in zip(batch.accs, batch.group_ids) if gid == g}
        assert accs == {True, False}


def test_dynamic_sampling_logs_the_scorer_metrics_of_every_generation_batch():
    """reward/* (timeouts, errors, scoring time: counted; acc and score: per response) cover the refills too;
    they described the first generation batch only."""

    class Scorer(_FakeScorer):  # each call: one timeout, and the accuracy of its responses
        def score(self, requests):
            scored = super().score(requests)
            accs = [s["acc"] for s in scored.results]
            scored.metrics = lambda prefix: {
                f"{prefix}timeouts": 1.0,
                f"{prefix}acc_mean": sum(accs) / len(accs),
            }
            return scored

    cfg = _cfg("algorithm.dynamic_sampling.enable=true", "algorithm.adaptive_temperature.enable=false",
               "reward.overlong.enable=false")  # fmt: skip
    order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
    engine = _FakeEngine(lambda call, i, j: (j == 0) and (call > 1 or i % 2 == 0))  # a refill is needed
    m = (
        RolloutStage(cfg, _FakeDataset(), order, _FakeTokenizer(), engine, Scorer())
        .collect_on_lead(None)
        .extra_metrics
    )
    assert m["dynamic_sampling/gen_batches"] == 2 and m["reward/timeouts"] == 2.0
    assert m["reward/acc_mean"] == pytest.approx(m["dynamic_sampling/raw_acc_mean"])  # over all responses


def test_dynamic_sampling_fails_clearly_when_it_cannot_fill():
    cfg = _cfg("algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.max_num_gen_batches=3",
               "algorithm.adaptive_temperature.enable=false")  # fmt: skip
    stage = _stage(cfg, lambda call, i, j: False)  # every group all-wrong
    with pytest.raises(DynamicSamplingError, match="max_num_gen_batches=3"):
        stage.collect_on_lead(None)
    assert stage.engine.calls == 3


class _EvenPromptsMixedEngine:
    """Groups of even dataset indices are mixed (one right answer), odd ones all wrong, so a step needs a refill;
    generate call number ``cancel_at`` raises RolloutCancelled, as a stop's cancel makes a real engine do, and
    call number ``fail_at`` an EngineError, as a fleet that lost a server under on_server_failure=fail does."""

    def __init__(self, cancel_at=None, fail_at=None):
        self.calls, self.cancel_at, self.fail_at = 0, cancel_at, fail_at
        self.cancelled = threading.Event()  # RolloutEngine.cancelled: never set here

    def generate(self, prompts, params):
        self.calls += 1
        if self.calls == self.cancel_at:
            raise RolloutCancelled("fake engine")
        if self.calls == self.fail_at:
            raise EngineError("fake engine: server http://127.0.0.1:1 died")
        return [
            _sample(i, j, list(p), [1 if j == 0 and (p[0] - 100) % 2 == 0 else 0], [1.0], pi=i)
            for i, p in enumerate(prompts) for j in range(params.n)
        ]  # fmt: skip


def test_a_cancelled_rollout_rewinds_the_data_position_and_the_rerun_draws_the_same_batch():
    """A stop cancels step 2's refill (its second generate call): the stage is back where step 2 began (data
    order, group ids: the seeds under rollout.seeded_sampling), so the resumed run generates the same batch."""
    cfg = _cfg("algorithm.dynamic_sampling.enable=true", "algorithm.adaptive_temperature.enable=false",
               "reward.overlong.enable=false")  # fmt: skip

    def stage(engine):
        order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
        return RolloutStage(cfg, _FakeDataset(), order, _FakeTokenizer(), engine, _FakeScorer())

    reference = stage(_EvenPromptsMixedEngine())
    reference.collect_on_lead(None)
    expected = reference.collect_on_lead(None)  # step 2: two generate calls (calls 3 and 4)
    assert reference.engine.calls == 4
    cancelled = stage(_EvenPromptsMixedEngine(cancel_at=4))
    cancelled.collect_on_lead(None)
    before = cancelled.state_dict()
    with pytest.raises(RolloutCancelled):
        cancelled.collect_on_lead(None)
    assert cancelled.state_dict() == before != reference.state_dict()
    again = cancelled.collect_on_lead(None)
    assert [p.index for p in again.prompts] == [p.index for p in expected.prompts]
    assert (again.group_ids, again.scores) == (expected.group_ids, expected.scores)
    assert cancelled.state_dict() == reference.state_dict()


def test_a_failed_rollout_rewinds_and_every_rank_learns_of_it():
    """A rollout that fails (step 2's refill; then a batch generating ahead) is no error out of collect or
    finish_ahead: every rank learns of it there (None, False), the lead keeps its error for the loop, which
    saves the last completed step and then raises it, and the data position is the one from before that
    rollout, so the run resumed from that checkpoint draws the same batch."""
    from tests.parallel_utils import world_of_one

    common = ("algorithm.dynamic_sampling.enable=true", "algorithm.adaptive_temperature.enable=false",
              "reward.overlong.enable=false")  # fmt: skip
    for cfg, fail_at in [(_cfg(*common), 4), (_cfg(*common, *AHEAD), 3)]:
        with world_of_one():
            order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
            engine = _EvenPromptsMixedEngine(fail_at=fail_at)
            stage = RolloutStage(cfg, _FakeDataset(), order, _FakeTokenizer(), engine, _FakeScorer())
            assert stage.collect(None) is not None and stage.finish_ahead()  # step 1: calls 1 and 2
            position = stage.state_dict()
            if cfg.rollout.max_staleness:
                stage.launch_ahead(None)  # step 2's batch generating ahead fails at its first call
                assert (
                    not stage.finish_ahead()
                )  # the step that trained meanwhile: no sync; saved, then raised
            else:
                assert stage.collect(None) is None  # step 2 does not happen
            assert isinstance(stage.failure, EngineError) and "died" in str(stage.failure)
            assert stage.ended and not stage.cancelled and engine.calls == fail_at
            assert stage.state_dict() == position


def test_a_failed_evaluation_ends_the_rollouts_on_every_rank():
    """An evaluation that fails on the lead (a server lost under on_server_failure=fail, the scorer) is no error
    out of eval_metrics: it returns no metrics and keeps the error, and agree_on_failure (after every step)
    tells every rank; the loop then saves the step it evaluated and raises the error, as after a failed sync."""
    from megatron_hapo.trainer.loop import eval_metrics
    from tests.parallel_utils import world_of_one

    class FailingEvaluator:
        def due(self, step, last=False):
            return True

        def run(self, engine, step):
            raise EngineError("fake engine: server http://127.0.0.1:1 died during the evaluation")

    cfg = _cfg("algorithm.adaptive_temperature.enable=false")
    with world_of_one():
        order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
        stage = RolloutStage(
            cfg, _FakeDataset(), order, _FakeTokenizer(), _EvenPromptsMixedEngine(), _FakeScorer()
        )
        stage.agree_on_failure()
        assert not stage.ended  # nothing failed yet
        run = SimpleNamespace(evaluator=FailingEvaluator(), rollout=stage, total_steps=10)
        assert eval_metrics(run, 3) == {}
        stage.agree_on_failure()
        assert isinstance(stage.failure, EngineError) and stage.ended and not stage.cancelled
        assert eval_metrics(run, 4) == {}  # the engine is not asked again


class _GeneratesUntilCancelled:
    """A generate call that runs until :meth:`cancel` (from another thread), as a real engine's long rollout."""

    def __init__(self):
        self.cancelled = threading.Event()

    def generate(self, prompts, params):
        assert self.cancelled.wait(30)
        raise RolloutCancelled("fake engine")

    def cancel(self):
        self.cancelled.set()


def test_a_stop_cancels_the_batch_generating_ahead_and_every_rank_learns_it(tmp_path):
    """rollout.max_staleness=1: the next step's batch generates in a thread while this step trains; a stop's
    cancel ends it, finish_ahead reports it (the loop then saves this step without a weight sync), the stage is
    back at the data position the ahead rollout began from, and nothing generated ahead is checkpointed."""
    from tests.parallel_utils import world_of_one

    cfg = _cfg(*AHEAD, "algorithm.dynamic_sampling.enable=true", "algorithm.adaptive_temperature.enable=false",
               "reward.overlong.enable=false")  # fmt: skip
    with world_of_one():
        order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
        stage = RolloutStage(
            cfg, _FakeDataset(), order, _FakeTokenizer(), _EvenPromptsMixedEngine(), _FakeScorer()
        )
        assert stage.collect(None) is not None and stage.finish_ahead()  # step 1, nothing generating ahead
        position = stage.state_dict()
        stage.engine = _GeneratesUntilCancelled()
        stage.launch_ahead(None)  # step 2's batch, while step 1 trains
        stage.cancel()  # the stop (its watcher thread, in the trainer)
        assert not stage.finish_ahead() and stage.cancelled
        assert stage.state_dict() == position  # no ready batch; the data position before the ahead rollout
        assert stage.collect(None) is None  # a later rollout is cancelled at once


def test_a_stop_during_the_update_skips_the_weight_sync():
    """rollout.max_staleness=0, a signal while the step trains (no rollout running): finish_ahead tells every
    rank to skip the sync into an engine that is about to shut down (a job-wide signal may have reached its
    servers too); the run then saves this step and stops."""
    from tests.parallel_utils import world_of_one

    cfg = _cfg("algorithm.adaptive_temperature.enable=false")
    with world_of_one():
        order = PromptOrder(100, cfg.data.train_batch_size, seed=0)
        stage = RolloutStage(
            cfg, _FakeDataset(), order, _FakeTokenizer(), _GeneratesUntilCancelled(), _FakeScorer()
        )
        assert stage.finish_ahead()
        stage.cancel()
        assert not stage.finish_ahead() and stage.cancelled


def test_stepbatch_first_groups():
    b = StepBatch([None] * 6, [None] * 6, [7, 7, 3, 3, 9, 9], [0.0] * 6, [False] * 6)
    assert b.first_groups(2).group_ids == [7, 7, 3, 3]


def test_checkpoint_discovery(tmp_path):
    """auto = the newest step_<N> whose manifest checks out; a killed save (.tmp_*) is never one."""
    assert select("auto", tmp_path / "none") is None
    for step in (2, 10, 4):
        d = tmp_path / f"step_{step}"
        d.mkdir()
        (d / STATE_FILE).write_text(json.dumps({"step": step}))
        manifest.write(d, step)
    (tmp_path / ".tmp_step_12").mkdir()  # an interrupted save is never picked
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_4", "step_10"]
    assert select("auto", tmp_path).name == "step_10"
    assert select("none", tmp_path) is None
    (tmp_path / "step_11").mkdir()  # no manifest: an unfinished save (or not ours)
    assert select("auto", tmp_path).name == "step_10"
    with pytest.raises(CheckpointInvalid, match=r"checkpoint.resume=.*step_11.*no manifest.json"):
        select(str(tmp_path / "step_11"), tmp_path)


def test_console_table():
    assert "reward" in format_header() and "temp" in format_header()
    row = format_row({"step": 3, "reward/mean": 0.5})
    assert row.split()[0] == "3" and "-" in row


def test_console_eta_follows_the_recent_wall_time_per_step(tmp_path, capsys, monkeypatch):
    """Steps left x the mean wall time per step over the last ten rows: evaluations and saves count."""
    assert format_header().split()[-1] == "eta" and format_duration(100000) == "27:46:40"
    cfg = load_config(
        CONFIG, ["logging.jsonl=false", "logging.tensorboard=false", "logging.plots=false", "logging.stdout_every=1"],
        world_size=1, check_env=False,
    )  # fmt: skip
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    log = RunLogger(tmp_path, cfg, lead=True, total_steps=20)
    log.log(0, {"reward/mean": 0.5})  # the evaluation before training: no step time yet
    # step 1: its own time/step_s (no earlier training row); then the wall time between rows; step 13
    # carries an evaluation (20 s) that its time/step_s leaves out
    for step, wall, step_s in [(1, 40, 30), (2, 10, 10)] + [(s, 5, 5) for s in range(3, 13)] + [(13, 25, 5)]:
        clock[0] += wall
        log.log(step, {"time/step_s": float(step_s)})
    etas = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]]
    assert etas[:3] == ["-", "0:09:30", "0:06:00"]  # 19 x 30 s; 18 x mean(30, 10)
    assert etas[12] == "0:00:40"  # step 12: 8 steps left at the last ten rows' 5 s
    assert etas[13] == "0:00:49"  # step 13: 7 left at mean(9 x 5 s, 25 s) = 7 s
    assert not list(tmp_path.iterdir())  # console only: every file sink was off


def test_console_prints_each_evaluation_on_a_line_of_its_own(tmp_path, capsys):
    """The table has no column for evaluations: each gets a line with the mean avg@k and each benchmark's, after its
    step's line; a row holding only an evaluation (before training, or one a resume finished) prints that line alone,
    and an evaluation is printed even on a step that ``logging.stdout_every`` leaves out of the table."""
    cfg = load_config(
        CONFIG, ["logging.jsonl=false", "logging.tensorboard=false", "logging.plots=false", "logging.stdout_every=2"],
        world_size=1, check_env=False,
    )  # fmt: skip
    log = RunLogger(tmp_path, cfg, lead=True, total_steps=4)
    evaluation = {
        "eval/avg@8": 0.4375,
        "eval/aime/avg@8": 0.375,
        "eval/aime/pass@8": 0.9,
        "eval/math/avg@8": 0.5,
    }
    log.log(0, evaluation)
    log.log(1, {"reward/mean": 0.5, **evaluation})
    log.log(2, {"reward/mean": 0.25, **evaluation})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "eval before training: avg@8 0.438 (aime 0.375, math 0.500)"
    assert lines[1] == "eval after step 1: avg@8 0.438 (aime 0.375, math 0.500)"  # step 1: not a table row
    assert lines[2].split()[:2] == ["step", "reward"] and lines[3].split()[:2] == ["2", "0.250"]
    assert lines[4].startswith("eval after step 2: avg@8") and len(lines) == 5


def test_close_run_stops_the_scorer_pool_before_the_engine():
    """SGLang's own engine shutdown SIGKILLs every child of the process, the pool's workers too (ours keeps to
    the engine's processes: tests/rollout/test_inprocess_and_sync.py): the pool is stopped first, the engine
    last."""
    calls = []

    def part(name):
        return SimpleNamespace(close=lambda: calls.append(name), shutdown=lambda: calls.append(name))

    run = SimpleNamespace(
        logger=part("logger"),
        synchronizer=part("synchronizer"),
        rollout=SimpleNamespace(engine=part("engine"), scorer=part("scorer")),
    )
    close_run(run)
    assert calls == ["logger", "synchronizer", "scorer", "engine"]

    # a failing step stops none after it (a full disk failed the plots, and the engine and pool were left
    # running); the first failure is raised once all are closed, the synchronizer's only logged
    def failing(name, error):
        def fail():
            calls.append(name)
            raise error

        return SimpleNamespace(close=fail, shutdown=fail)

    calls.clear()
    full = OSError(28, "No space left on device")
    run.logger, run.synchronizer = failing("logger", full), failing("synchronizer", RuntimeError("gone"))
    run.rollout.scorer = failing("scorer", RuntimeError("second"))
    with pytest.raises(OSError) as raised:
        close_run(run)
    assert raised.value is full and calls == ["logger", "synchronizer", "scorer", "engine"]
    calls.clear()
    run.logger = run.rollout.scorer = part("fine")
    close_run(run)  # the synchronizer's failure alone is logged, not raised
    assert calls == ["fine", "synchronizer", "fine", "engine"]
