"""End to end against a real in-process SGLang engine serving a tiny random model: ``evaluate``,
the trainer's ``Evaluator`` and the ``hapo-eval`` command line, on tiny benchmark files.

Two benchmarks of 8 prompts each, from ``examples/data/tiny_math_val.parquet``:
* ``arith``: the rows as they are (``math_dapo`` source -> the real DAPO scorer; a random model gets
  every answer wrong, and the DAPO scorer's -1 reward must not leak into the accuracy);
* ``checksum``: the same prompts routed to a deterministic test scorer with mixed outcomes
  (``tests/eval/helper_scorers.py``), so that avg@k and pass@k are non-trivial.
The numbers are recomputed from the per-answer records and from re-scoring each answer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.eval import Evaluator, evaluate, pass_at_k
from megatron_hapo.rewards import compute_score
from megatron_hapo.rollout import InProcessSGLangEngine
from tests.eval import helper_scorers

pytestmark = pytest.mark.slow

VAL = Path(__file__).resolve().parents[2] / "examples" / "data" / "tiny_math_val.parquet"
TRAIN = VAL.with_name("tiny_math_train.parquet")  # 260 prompts
K = 4
MAX_NEW = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny"), family="qwen2", initializer_range=0.3)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rows = pq.read_table(VAL).slice(0, 8)
    pq.write_table(rows, out / "arith.parquet")
    checksum = rows.to_pylist()
    for r in checksum:
        r["data_source"] = helper_scorers.SOURCE
    (out / "checksum.jsonl").write_text("\n".join(json.dumps(r) for r in checksum) + "\n")
    return {"arith": out / "arith.parquet", "checksum": out / "checksum.jsonl"}


@pytest.fixture(scope="module")
def engine(model_dir):
    # the HAPO sampler serves seeds (seeded evaluation); it samples unseeded rows as stock SGLang does
    eng = InProcessSGLangEngine(model_dir, seed=0, hapo_sampler=True)
    yield eng
    eng.shutdown()


def check_consistent(name: str, metrics: dict, records: list[dict], k: int, max_new: int) -> None:
    """The benchmark's numbers follow from its per-answer records, and each record's acc/score is what
    the scorer gives for its response."""
    assert len(records) == metrics["num_prompts"] * k == metrics["num_samples"]
    by_prompt: dict[int, list[dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt"], []).append(r)
        assert r["length"] <= max_new and r["finish_reason"] in ("stop", "length")
        again = compute_score(r["data_source"], r["response"], r["ground_truth"])
        assert (again["acc"], again["score"]) == (r["acc"], r["score"]), (name, r)
    assert sorted(by_prompt) == list(range(metrics["num_prompts"]))
    correct = [sum(r["acc"] for r in group) for group in by_prompt.values()]
    assert all(len(group) == k for group in by_prompt.values())
    assert metrics["avg_at_k"] == pytest.approx(sum(c / k for c in correct) / len(correct))
    for j, value in metrics["pass_at"].items():
        expected = sum(pass_at_k(k, c, int(j)) for c in correct) / len(correct)
        assert value == pytest.approx(expected)
    assert metrics["pass_at"][str(k)] == pytest.approx(sum(c > 0 for c in correct) / len(correct))
    assert metrics["mean_response_length"] == pytest.approx(sum(r["length"] for r in records) / len(records))
    truncated = sum(r["finish_reason"] == "length" for r in records)
    assert metrics["num_truncated"] == truncated
    assert metrics["truncation_rate"] == pytest.approx(truncated / len(records))
    assert metrics["num_timeouts"] == sum(r["timed_out"] for r in records) == 0


def test_evaluate_on_real_engine(engine, tokenizer, bench_files):
    result = evaluate(
        engine,
        tokenizer,
        bench_files,
        k=K,
        max_new_tokens=MAX_NEW,
        pass_ks=[2],
        keep_samples=True,
        batch_prompts=5,
    )  # batch_prompts=5: two generate calls per benchmark, the second one partial
    data = json.loads(result.to_json())
    assert list(data["benchmarks"]) == ["arith", "checksum"]
    assert data["settings"] | {"weight_version": None} == {
        "k": K, "temperature": 0.5, "top_p": 0.7, "top_k": -1, "max_new_tokens": MAX_NEW, "stop": [],
        "model": None, "weight_version": None, "step": None, "seed": None,
    }  # fmt: skip
    for name, metrics in data["benchmarks"].items():
        assert metrics["num_prompts"] == 8 and metrics["k"] == K
        assert set(metrics["pass_at"]) == {"1", "2", str(K)}
        check_consistent(name, metrics, data["samples"][name], K, MAX_NEW)

    arith = data["samples"]["arith"]
    assert all(r["score"] == -1.0 and not r["acc"] for r in arith)  # DAPO scorer: -1 reward, acc False
    assert data["benchmarks"]["arith"]["avg_at_k"] == 0.0  # accuracy, never the -1 reward (B13)
    checksum = data["samples"]["checksum"]
    assert 0 < sum(r["acc"] for r in checksum) < len(checksum), "test scorer should give mixed outcomes"
    assert data["average_avg_at_k"] == pytest.approx(data["benchmarks"]["checksum"]["avg_at_k"] / 2)
    # responses are sampled (T=0.5), not copies of one another
    assert len({r["response"] for r in checksum}) > 1

    table = result.table().splitlines()
    assert table[0].startswith(f"| benchmark | prompts | avg@{K} | pass@1 | pass@2 | pass@{K} |")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| arith", "| checksum", "| **Avg**"]


def _responses(result) -> dict[str, list[str]]:
    return {name: [r["response"] for r in records] for name, records in result.samples.items()}


def test_a_seeded_evaluation_depends_only_on_the_weights_and_the_seed(engine, tokenizer, bench_files):
    """Seeded, every answer is the same draw whatever the batching and the engine's own random state (unseeded
    draws in between); another seed draws differently, and so do two unseeded evaluations."""
    from megatron_hapo.rollout.types import GenerationParams

    def run(seed, batch_prompts=5):
        kwargs = dict(k=K, max_new_tokens=MAX_NEW, keep_samples=True, batch_prompts=batch_prompts, seed=seed)
        return evaluate(engine, tokenizer, bench_files, **kwargs)

    first = run(7)
    assert first.settings.seed == 7
    engine.generate([[1, 2, 3]], GenerationParams(n=4, max_new_tokens=8))  # moves the engine's generator on
    again = run(7, batch_prompts=3)
    assert _responses(again) == _responses(first)
    assert again.metrics() | {"eval/wall_s": 0} == first.metrics() | {"eval/wall_s": 0}
    assert _responses(run(8)) != _responses(first)
    assert _responses(run(None)) != _responses(run(None))


class _Flaky:
    """The module's engine, counting the prompts of each generate call; call ``fail_at`` (1-based) fails, as an
    engine lost mid-evaluation would."""

    def __init__(self, engine, fail_at: int | None = None):
        self._engine, self.fail_at, self.calls = engine, fail_at, []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        if len(self.calls) == self.fail_at:
            raise RuntimeError("engine lost")
        return self._engine.generate(prompts, params)


def test_an_interrupted_evaluation_resumes_from_its_journal_with_the_same_answers(
    engine, tokenizer, bench_files, tmp_path
):
    """Seeded, a resumed evaluation is the uninterrupted one: the journal keeps every scored batch, the rerun
    generates only the prompts it lacks (each with its own seed), and the result is the same to the answer."""
    kwargs = dict(k=K, max_new_tokens=MAX_NEW, keep_samples=True, batch_prompts=3, seed=5)
    whole = evaluate(engine, tokenizer, bench_files, **(kwargs | {"batch_prompts": 4}))  # batched otherwise
    journal = tmp_path / "answers" / "model0.jsonl"
    crashing = _Flaky(engine, fail_at=3)  # 8 prompts per benchmark in batches of 3: arith's third batch
    with pytest.raises(RuntimeError, match="engine lost"):
        evaluate(crashing, tokenizer, bench_files, journal=journal, **kwargs)
    resuming, lines = _Flaky(engine), []
    resumed = evaluate(resuming, tokenizer, bench_files, journal=journal, progress=lines.append, **kwargs)
    assert resuming.calls == [2, 3, 3, 2]  # arith's last 2 prompts, then checksum's 8
    assert lines[0] == f"resuming: 6 of 16 prompts already answered ({journal})"
    assert _responses(resumed) == _responses(whole)
    assert resumed.metrics() | {"eval/wall_s": 0} == whole.metrics() | {"eval/wall_s": 0}
    assert evaluate(
        _Flaky(engine, fail_at=1), tokenizer, bench_files, journal=journal, **kwargs
    ).benchmarks == (whole.benchmarks)  # all answered: nothing generated


def test_trainer_evaluator_from_config(engine, tokenizer, bench_files):
    from megatron_hapo.config.schema import RootConfig

    cfg = RootConfig()
    cfg.eval.benchmarks = [str(bench_files["checksum"])]
    cfg.eval.every = 2
    cfg.eval.max_new_tokens = 6
    cfg.eval.max_prompts = 3
    cfg.sampling.val.n = 2
    evaluator = Evaluator.from_config(cfg, tokenizer)
    assert [s for s in range(5) if evaluator.due(s)] == [0, 2, 4]
    for step in (0, 2):
        result = evaluator.run(engine, step)
        (m,) = result.benchmarks.values()
        assert (m.num_prompts, m.k, m.num_samples) == (3, 2, 6)
        assert m.mean_response_length <= 6
        assert result.settings.step == step and result.settings.temperature == 0.5
        assert result.metrics()["eval/checksum/avg@2"] == m.avg_at_k
    best = evaluator.history.best()
    assert best["checksum"][0] == max(r.benchmarks["checksum"].avg_at_k for _, r in evaluator.history.results)
    assert result.settings.seed is None  # rollout.seeded_sampling off
    cfg.rollout.seeded_sampling, cfg.trainer.seed = True, 11  # seeded like the rollouts, from trainer.seed
    assert Evaluator.from_config(cfg, tokenizer).run(engine, 4).settings.seed == 11


def test_the_trainers_evaluation_routes_by_data_source_whatever_the_training_scorer(
    engine, tokenizer, bench_files
):
    """reward.scorer forces the scorer of the training rewards only: the evaluator, handed the run's pool (forced
    to the DAPO scorer here), still scores each benchmark by its data source, as hapo-eval does. (It scored the
    checksum benchmark with the DAPO scorer: every answer wrong, no "Answer:" line.)"""
    from megatron_hapo.config.schema import RootConfig
    from megatron_hapo.rewards import ScorerPool

    cfg = RootConfig()
    cfg.eval.benchmarks = [str(bench_files["checksum"])]
    cfg.eval.max_new_tokens, cfg.eval.max_prompts, cfg.sampling.val.n = 6, 4, 2
    cfg.rollout.seeded_sampling = True  # both evaluations draw the same answers
    pool = ScorerPool(1, scorer="dapo", extra_modules=["tests.eval.helper_scorers"])
    try:
        forced = Evaluator.from_config(cfg, tokenizer, scorer=pool).run(engine, 0)
    finally:
        pool.close()
    routed = Evaluator.from_config(cfg, tokenizer).run(engine, 0)  # scored in this process, routed
    assert forced.benchmarks["checksum"].avg_at_k == routed.benchmarks["checksum"].avg_at_k > 0


def test_the_trainers_evaluation_continues_its_journal_after_a_resume(
    engine, tokenizer, bench_files, tmp_path, caplog
):
    """The trainer's ``Evaluator`` with a run directory's journals (``record_to``): an evaluation cut short after
    its first benchmark is pending at the resume from that step's checkpoint; the resumed attempt's evaluator
    generates only the second benchmark and records what an uninterrupted evaluation records (seeded). Journals of
    steps after the resume's go (:func:`drop_journals_after`); one of other settings starts over, saying so."""
    from megatron_hapo.config.schema import RootConfig
    from megatron_hapo.eval import drop_journals_after

    cfg = RootConfig()
    cfg.eval.benchmarks = [str(p) for p in bench_files.values()]
    cfg.eval.every, cfg.eval.max_new_tokens, cfg.sampling.val.n = 2, MAX_NEW, K
    cfg.rollout.seeded_sampling = True
    whole = Evaluator.from_config(cfg, tokenizer).run(engine, 2)
    history, answers = tmp_path / "eval_history.jsonl", tmp_path / "eval_answers"

    interrupted = Evaluator.from_config(cfg, tokenizer)
    interrupted.record_to(history, answers)
    with pytest.raises(RuntimeError, match="engine lost"):
        interrupted.run(_Flaky(engine, fail_at=2), 2)  # one generate call per benchmark: the second fails
    resumed, resuming = Evaluator.from_config(cfg, tokenizer), _Flaky(engine)
    resumed.record_to(history, answers)
    assert resumed.pending(2) and not resumed.pending(3) and not resumed.pending(1)
    result = resumed.run(resuming, 2)
    assert resuming.calls == [8]  # the second benchmark's 8 prompts only
    assert result.metrics() | {"eval/wall_s": 0} == whole.metrics() | {"eval/wall_s": 0}
    assert not resumed.pending(2) and [s for s, _ in resumed.history.results] == [2]

    (answers / "step_4.jsonl").write_text("{}\n")
    assert drop_journals_after(answers, 2) == [answers / "step_4.jsonl"]  # step 2's stays
    cfg.sampling.val.temperature = 0.9
    other = Evaluator.from_config(cfg, tokenizer)
    other.record_to(tmp_path / "other_history.jsonl", answers)
    assert other.run(engine, 2).settings.temperature == 0.9
    assert "step 2's evaluation starts over: its answer journal is of other settings" in caplog.text
    # a fresh start (resume step 0) keeps the journal of the evaluation before training, continued for the
    # same initial weights (an attempt that failed in its first steps): nothing generated again
    first = Evaluator.from_config(cfg, tokenizer)
    first.record_to(tmp_path / "first_history.jsonl", answers)
    before = first.run(engine, 0)
    assert drop_journals_after(answers, 0) == [answers / "step_2.jsonl"]
    assert before.settings.model == cfg.model.hf_path
    again, counted = Evaluator.from_config(cfg, tokenizer), _Flaky(engine)
    again.record_to(tmp_path / "again_history.jsonl", answers)
    assert again.run(counted, 0).metrics() | {"eval/wall_s": 0} == before.metrics() | {"eval/wall_s": 0}
    assert counted.calls == []
    cfg.model.load_weights = False  # other weights before training: that evaluation starts over
    other, counted = Evaluator.from_config(cfg, tokenizer), _Flaky(engine)
    other.record_to(tmp_path / "random_history.jsonl", answers)
    assert (
        other.run(counted, 0).settings.model
        == f"{cfg.model.hf_path} (random weights, seed {cfg.trainer.seed})"
    )
    assert counted.calls == [8, 8] and "step 0's evaluation starts over" in caplog.text


class _Borrowed:
    """The module's engine, lent to the command line, which shuts down what it starts."""

    def __init__(self, engine):
        self._engine = engine

    def generate(self, prompts, params):
        return self._engine.generate(prompts, params)

    def shutdown(self):
        pass


def test_cli_writes_table_and_json(engine, model_dir, bench_files, tmp_path, monkeypatch, capsys):
    from megatron_hapo import cli
    from megatron_hapo.cli import eval as eval_cli

    started = []
    monkeypatch.setattr(eval_cli, "build_engine", lambda args: started.append(args) or _Borrowed(engine))
    out = tmp_path / "res" / "results.json"
    argv = [
        "--model", str(model_dir), "--benchmarks", str(bench_files["arith"]), str(bench_files["checksum"]),
        "--names", "ARITH", "CHECK", "--k", "3", "--max-new-tokens", "8", "--out", str(out),
        "--save-samples", "--scorer-workers", "1", "--reward-extra-modules", "tests.eval.helper_scorers",
        "--fleet-servers", "0", "--seeded", "--seed", "5", "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.eval_main(argv)
    assert exit_info.value.code == 0
    (args,) = started
    assert (args.temperature, args.top_p, args.fleet_servers, args.seeded) == (0.5, 0.7, 0, True)
    printed = capsys.readouterr().out
    assert "| ARITH | 8 |" in printed and "| CHECK | 8 |" in printed and f"wrote {out}" in printed
    assert "hapo-eval: eval ARITH: 8 prompts, avg@3 " in printed  # a line per benchmark as it completes
    assert "eval CHECK: 8 prompts" in (tmp_path / "run" / "logs" / "rank0.log").read_text()
    data = json.loads(out.read_text())
    assert data["settings"]["model"] == str(model_dir) and data["settings"]["k"] == 3
    assert data["settings"]["seed"] == 5
    for name in ("ARITH", "CHECK"):
        check_consistent(name, data["benchmarks"][name], data["samples"][name], 3, 8)
    avg = [data["benchmarks"][n]["avg_at_k"] for n in ("ARITH", "CHECK")]
    assert data["average_avg_at_k"] == pytest.approx(sum(avg) / 2)
    assert not math.isnan(data["average_avg_at_k"])
    # the same command on the same run directory answers from its journal: nothing is generated again
    monkeypatch.setattr(eval_cli, "build_engine", lambda args: _Borrowed(_Flaky(engine, fail_at=1)))
    with pytest.raises(SystemExit) as exit_info:
        cli.eval_main(argv)
    assert exit_info.value.code == 0
    answers = tmp_path / "run" / "answers" / "model0.jsonl"
    assert f"hapo-eval: resuming: 16 of 16 prompts already answered ({answers})" in capsys.readouterr().out
    again = json.loads(out.read_text())
    assert again["benchmarks"] == data["benchmarks"] and again["samples"] == data["samples"]


def test_cli_bad_file_fails_fast_naming_the_row(model_dir, tmp_path, monkeypatch, capsys):
    from megatron_hapo.cli import eval as eval_cli

    monkeypatch.setattr(eval_cli, "build_engine", lambda args: pytest.fail("engine started for a bad file"))
    bad = tmp_path / "aime25.jsonl"
    bad.write_text(
        '{"data_source": "x", "prompt": "1+1?", "reward_model": {"ground_truth": "2"}}\n{"prompt": 3}\n'
    )
    assert (
        eval_cli.main(["--model", str(model_dir), "--benchmarks", str(bad), "--run-dir", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "benchmark 'aime25'" in err and "aime25.jsonl row 1" in err


def _hapo_eval(*argv: str, returncode: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HAPO_VERBOSE"}  # the quiet console is tested
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_hapo.cli.eval", *argv], env=dict(env, OMP_NUM_THREADS="1"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == returncode, proc.stderr[-4000:]
    return proc


def _perturbed_copy(model_dir: Path, out: Path) -> Path:
    """Another checkpoint of the same model (config and tokenizer): every weight moved by noise."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    generator = torch.Generator().manual_seed(1)
    save_file(
        {n: t + (0.3 * torch.randn(t.shape, generator=generator)).to(t.dtype) for n, t in weights.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    return out


def test_cli_evaluates_checkpoints_on_one_engine_with_a_quiet_console(model_dir, bench_files, tmp_path):
    """The real command, engine included, on two checkpoints of one architecture: the second is loaded into the
    first one's engine and scores exactly what it scores on an engine of its own (seeded). The console has
    the run directory, a line per benchmark, the tables, nothing on stderr; SGLang's settings are in
    logs/rank0.log, its scheduler's output in logs/sglang.log, the results in results.json. A checkpoint that
    fails to load ends the command with its error, and the results of those before it stay in results.json."""
    other = _perturbed_copy(model_dir, tmp_path / "other")
    common = ("--benchmarks", str(bench_files["arith"]), "--k", "2", "--max-prompts", "4", "--max-new-tokens",
              "6", "--scorer-workers", "1", "--seeded", "--save-samples",
              "--server-arg", "enable_cache_report=true")  # fmt: skip
    run_dir = tmp_path / "run"
    proc = _hapo_eval("--model", str(model_dir), str(other), *common, "--run-dir", str(run_dir))
    out = proc.stdout
    assert out.splitlines()[0].startswith(f"hapo-eval: run directory {run_dir}; SGLang's output in")
    assert f"hapo-eval: {other}: eval arith: 4 prompts, avg@2 " in out
    assert f"| {model_dir} |" in out and f"| {other} |" in out  # the comparison table
    assert proc.stderr.strip() == "", proc.stderr[-4000:]
    first, second = json.loads((run_dir / "results.json").read_text())
    assert (first["settings"]["model"], second["settings"]["model"]) == (str(model_dir), str(other))
    assert second["settings"]["weight_version"] == str(other)
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "server_args=" in log and f"weight sync {other} via disk" in log
    assert "the rollout engine runs with --server-arg as given: enable_cache_report=True" in log
    assert "Multi-thread loading shards" in (run_dir / "logs" / "sglang.log").read_text()  # the scheduler's

    def answers(result):
        return [r["response"] for r in result["samples"]["arith"]]

    broken = shutil.copytree(model_dir, tmp_path / "broken", ignore=shutil.ignore_patterns("*.safetensors"))
    proc = _hapo_eval("--model", str(other), str(broken), *common, "--run-dir", str(tmp_path / "alone"),
                      returncode=1)  # fmt: skip
    assert (
        proc.stderr.strip()
        == f"hapo-eval: {broken} has neither model.safetensors.index.json nor model.safetensors: no HF weights"
    )
    (alone,) = json.loads((tmp_path / "alone" / "results.json").read_text())
    assert answers(second) == answers(alone) != answers(first)
    assert second["benchmarks"] == alone["benchmarks"]


def test_cli_stopped_by_a_signal_says_how_to_resume(engine, model_dir, tmp_path, monkeypatch, capsys):
    """SIGTERM to hapo-eval's process group while it answers (what a scheduler's preemption and torchrun send; a
    Ctrl-C sends SIGINT the same way): the engine is shut down, the command exits 143 and names the prompts
    answered and the --run-dir that resumes them, nothing of it keeps running, and the same command resumes."""
    import psutil

    from megatron_hapo import cli
    from megatron_hapo.cli import eval as eval_cli

    run_dir, total = tmp_path / "run", 64
    argv = ["--model", str(model_dir), "--benchmarks", str(TRAIN), "--max-prompts", str(total), "--k", "2",
            "--max-new-tokens", "16", "--batch-prompts", "1", "--scorer-workers", "1", "--run-dir", str(run_dir)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HAPO_VERBOSE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "megatron_hapo.cli.eval", *argv], env=dict(env, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    journal = run_dir / "answers" / "model0.jsonl"
    deadline = time.monotonic() + 240
    while not (journal.exists() and journal.read_text().count("\n") >= 2):  # the header and one answer
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-4000:]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-4000:]
    answered = (
        journal.read_text().count("\n") - 1
    )  # whole lines (a line the signal cut short is answered again)
    assert 1 <= answered < total
    assert err.splitlines() == [
        f"hapo-eval: stopped on SIGTERM (exit code 143); answered and kept in {journal.parent}/: "
        f"{model_dir} {answered} of {total} prompts",
        f"hapo-eval: the same command with --run-dir {run_dir} resumes the evaluation",
    ]
    assert "SGLang engine shut down: its processes" in (run_dir / "logs" / "rank0.log").read_text()

    def left_running() -> list[list[str]]:
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(p.pid) == proc.pid:
                    found.append(p.cmdline())
        return found

    deadline = time.monotonic() + 20  # multiprocessing's resource tracker exits once it reads its pipe's end
    while (left := left_running()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []

    monkeypatch.setattr(eval_cli, "build_engine", lambda args: _Borrowed(engine))
    with pytest.raises(SystemExit) as exit_info:
        cli.eval_main(argv)
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"hapo-eval: resuming: {answered} of {total} prompts already answered ({journal})" in printed
    assert f"| {TRAIN.stem} | {total} |" in printed
