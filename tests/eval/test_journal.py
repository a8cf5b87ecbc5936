"""The answer journal of an evaluation (``eval/journal.py``): what it keeps reads back, an evaluation with other
settings, prompts or model files is refused naming the difference, and a line cut short by a crash is
dropped. Resuming a real evaluation from it: tests/eval/test_engine_eval.py."""

from __future__ import annotations

import os
import shutil

import pytest

from megatron_hapo.data import PromptSample
from megatron_hapo.data.dataset import DatasetStats
from megatron_hapo.eval.benchmarks import Benchmark
from megatron_hapo.eval.journal import AnsweredPrompt, AnswerJournal, JournalMismatch, files_identity
from megatron_hapo.eval.metrics import SampleOutcome

SETTINGS = {"k": 2, "temperature": 0.5, "stop": ("</s>",), "seed": 3}


def _bench(name: str = "aime", truths: tuple[str, ...] = ("1", "2", "3")) -> Benchmark:
    prompts = [PromptSample(i, [5, 6, i], "math", t, {}, f"f row {i}") for i, t in enumerate(truths)]
    return Benchmark(name, f"{name}.parquet", prompts, DatasetStats())


def _answers(acc: bool) -> AnsweredPrompt:
    outcomes = [SampleOutcome(acc, 7, "stop"), SampleOutcome(False, 9, "length", timed_out=True)]
    return AnsweredPrompt(outcomes, [{"response": "x", "acc": acc}, {"response": "y", "acc": False}], "v1")


def test_answers_read_back_and_only_they_count_as_answered(tmp_path):
    path = tmp_path / "answers" / "model0.jsonl"
    journal = AnswerJournal(path, SETTINGS, [_bench()])
    journal.record("aime", {0: _answers(True), 2: _answers(False)})
    again = AnswerJournal(path, SETTINGS, [_bench()])
    assert len(again) == 2 and again.answered("aime", 1) is None
    assert again.answered("aime", 0) == _answers(True) and again.answered("aime", 2) == _answers(False)


def test_another_evaluation_is_refused_naming_what_differs_unless_nothing_was_answered(tmp_path):
    path = tmp_path / "model0.jsonl"
    AnswerJournal(path, SETTINGS, [_bench()]).record("aime", {0: _answers(True)})
    with pytest.raises(JournalMismatch, match=r"temperature 0.5 there, 0.6 here.*another run directory"):
        AnswerJournal(path, {**SETTINGS, "temperature": 0.6}, [_bench()])
    with pytest.raises(JournalMismatch, match=r"the prompts of aime differ"):
        AnswerJournal(path, SETTINGS, [_bench(truths=("1", "2", "4"))])  # another ground truth
    with pytest.raises(JournalMismatch, match=r"benchmarks \['aime'\] there, \['aime', 'amc'\] here"):
        AnswerJournal(path, SETTINGS, [_bench(), _bench("amc")])
    # no answer yet (a start that failed before the first batch): taken over, nothing to mix
    empty = tmp_path / "empty.jsonl"
    AnswerJournal(empty, SETTINGS, [_bench()])
    taken = AnswerJournal(empty, {**SETTINGS, "temperature": 0.6}, [_bench()])
    taken.record("aime", {1: _answers(False)})
    assert AnswerJournal(empty, {**SETTINGS, "temperature": 0.6}, [_bench()]).answered("aime", 1) == _answers(
        False
    )
    with pytest.raises(JournalMismatch, match=r"temperature 0.6 there, 0.5 here"):
        AnswerJournal(empty, SETTINGS, [_bench()])
    (tmp_path / "other.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(JournalMismatch, match="not an answer journal"):
        AnswerJournal(tmp_path / "other.jsonl", SETTINGS, [_bench()])


def test_a_model_written_anew_at_the_same_path_is_another_evaluation(tmp_path):
    """The same --model path after another export into it: its answers are not those of the journal."""
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"A" * 64)
    (model / "eval").mkdir()  # a subdirectory (a run directory, say) is not the model's
    settings = {**SETTINGS, "model": str(model)}
    path = model / "eval" / "model0.jsonl"
    AnswerJournal(path, settings, [_bench()]).record("aime", {0: _answers(True)})
    shutil.copytree(model, tmp_path / "copy", copy_function=shutil.copy2)  # a copy keeping the times
    assert files_identity(tmp_path / "copy") == files_identity(model)
    assert AnswerJournal(path, settings, [_bench()]).answered("aime", 0) == _answers(True)

    stat = (model / "model.safetensors").stat()
    (model / "model.safetensors").write_bytes(b"B" * 64)  # the same name and size, written again
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(JournalMismatch, match=r"the model's files: 2 files, 66 bytes, .* there, .* here"):
        AnswerJournal(path, settings, [_bench()])
    # a label that names no file (random weights, a hub id) has no files to compare
    assert files_identity("Qwen/Qwen2.5-Math-1.5B (random weights, seed 1)") is None


def test_a_line_cut_short_by_a_crash_is_dropped_and_the_journal_goes_on(tmp_path):
    path = tmp_path / "model0.jsonl"
    AnswerJournal(path, SETTINGS, [_bench()]).record("aime", {0: _answers(True), 1: _answers(True)})
    text = path.read_text()
    path.write_text(
        text[: text.rindex("\n", 0, len(text) - 1) + 12]
    )  # prompt 1's line, cut after 11 characters
    journal = AnswerJournal(path, SETTINGS, [_bench()])
    assert journal.answered("aime", 0) is not None and journal.answered("aime", 1) is None
    journal.record("aime", {1: _answers(False)})
    assert AnswerJournal(path, SETTINGS, [_bench()]).answered("aime", 1) == _answers(False)
