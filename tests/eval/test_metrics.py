"""Metric math on hand-made cases, table/JSON structure, history maxima and benchmark-file errors."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_hapo.data import DataError
from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.eval import (
    BenchmarkMetrics,
    EvalHistory,
    EvalResult,
    EvalSettings,
    Evaluator,
    SampleOutcome,
    benchmark_metrics,
    benchmark_names,
    load_benchmarks,
    pass_at_k,
)
from megatron_hapo.eval.runner import comparison_table


def brute_force_pass_at_k(accs: list[bool], k: int) -> float:
    """Share of all k-subsets of the answers that contain a correct one (the definition of pass@k)."""
    subsets = list(itertools.combinations(accs, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (8, 0, 1, 0.0),
        (8, 8, 8, 1.0),
        (8, 1, 1, 1 / 8),
        (8, 1, 8, 1.0),  # with k = n, pass@k is "any correct"
        (8, 2, 4, 1 - math.comb(6, 4) / math.comb(8, 4)),  # 1 - 15/70
        (5, 3, 3, 1.0),  # n - c < k: every 3-subset holds a correct one
        (10, 3, 2, 1 - math.comb(7, 2) / math.comb(10, 2)),  # 1 - 21/45
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_unbiased_against_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            accs = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(accs, k), abs=1e-12)
    assert pass_at_k(8, 2, 4) == pytest.approx(55 / 70)
    # the biased "1 - (1 - c/n)^k" is a different number: the test would catch using it
    assert pass_at_k(8, 2, 4) != pytest.approx(1 - (1 - 2 / 8) ** 4)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def _group(accs, lengths=None, reasons=None, timeouts=()):
    lengths = lengths or [10] * len(accs)
    reasons = reasons or ["stop"] * len(accs)
    return [
        SampleOutcome(acc=a, length=n, finish_reason=r, timed_out=i in timeouts)
        for i, (a, n, r) in enumerate(zip(accs, lengths, reasons, strict=True))
    ]


def test_benchmark_metrics_hand_case():
    groups = [
        _group([True, True, False, False], lengths=[1, 2, 3, 4], reasons=["stop", "length", "stop", "stop"]),
        _group([False] * 4, lengths=[10, 10, 10, 10], reasons=["length"] * 4, timeouts={1}),
        _group([True] * 4, lengths=[5, 5, 5, 5]),
    ]
    m = benchmark_metrics(groups, pass_ks=[2])
    assert m.num_prompts == 3 and m.k == 4 and m.num_samples == 12
    assert m.avg_at_k == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert m.pass_at[1] == pytest.approx(m.avg_at_k)
    assert m.pass_at[2] == pytest.approx((1 - math.comb(2, 2) / math.comb(4, 2) + 0 + 1) / 3)  # (5/6 + 1)/3
    assert m.pass_at[4] == pytest.approx(2 / 3)
    assert m.mean_response_length == pytest.approx((1 + 2 + 3 + 4 + 40 + 20) / 12)
    assert m.num_truncated == 5 and m.truncation_rate == pytest.approx(5 / 12)
    assert m.num_timeouts == 1 and m.num_errors == 0


def test_avg_at_k_is_a_mean_over_prompts_not_over_samples():
    # Equal group sizes make the two equal; the definition still averages per prompt first.
    m = benchmark_metrics([_group([True] * 8), _group([True] + [False] * 7)])
    assert m.avg_at_k == pytest.approx((1 + 1 / 8) / 2)


def test_benchmark_metrics_rejects_ragged_or_empty_groups():
    with pytest.raises(ValueError, match="same number"):
        benchmark_metrics([_group([True, False]), _group([True])])
    with pytest.raises(ValueError, match="no prompts"):
        benchmark_metrics([])
    with pytest.raises(ValueError, match="pass@5"):
        benchmark_metrics([_group([True] * 4)], pass_ks=[5])


def _result(values: dict[str, float], step: int | None = None) -> EvalResult:
    metrics = {
        name: BenchmarkMetrics(
            num_prompts=10,
            k=8,
            avg_at_k=v,
            pass_at={1: v, 8: min(1.0, 2 * v)},
            mean_response_length=100.0,
            truncation_rate=0.1,
            num_samples=80,
            num_truncated=8,
            num_timeouts=0,
            num_errors=0,
        )  # fmt: skip
        for name, v in values.items()
    }
    return EvalResult(EvalSettings(8, 0.5, 0.7, -1, 1024, step=step), metrics)


def test_table_and_json_structure():
    r = _result({"AIME24": 0.2533, "MATH500": 0.6683})
    table = r.table().splitlines()
    assert table[0] == (
        "| benchmark | prompts | avg@8 | pass@1 | pass@8 | mean len | truncated % | timeouts | errors |"
    )
    assert table[2].startswith("| AIME24 | 10 | 25.33 | 25.33 | 50.66 | 100.0 | 10.00 |")
    assert table[-1].startswith("| **Avg** |  | 46.08 |")  # (25.33 + 66.83) / 2
    data = json.loads(r.to_json())
    assert data["settings"]["k"] == 8 and data["settings"]["temperature"] == 0.5
    assert data["benchmarks"]["MATH500"]["avg_at_k"] == pytest.approx(0.6683)
    assert data["benchmarks"]["MATH500"]["pass_at"] == {"1": 0.6683, "8": 1.0}
    assert data["average_avg_at_k"] == pytest.approx((0.2533 + 0.6683) / 2)
    assert "samples" not in data
    metrics = r.metrics()
    assert metrics["eval/AIME24/avg@8"] == pytest.approx(0.2533) and metrics["eval/avg@8"] == r.average


def test_history_reports_per_benchmark_maxima_with_their_steps(tmp_path):
    path = tmp_path / "h.jsonl"
    h = EvalHistory.continued(path)  # no file yet: an empty history
    h.add(5, _result({"AIME24": 0.20, "AIME25": 0.15}))
    h.add(10, _result({"AIME24": 0.25, "AIME25": 0.12}))
    lines = path.read_text().splitlines()  # appended as each evaluation is added
    assert [json.loads(line)["step"] for line in lines] == [5, 10]
    h = EvalHistory.continued(path)  # a resumed run goes on from the file
    assert [(step, r.to_dict()) for step, r in h.results] == [
        (step, _result(values).to_dict())
        for step, values in ((5, {"AIME24": 0.20, "AIME25": 0.15}), (10, {"AIME24": 0.25, "AIME25": 0.12}))
    ]
    h.add(15, _result({"AIME24": 0.25, "AIME25": 0.14}))
    assert h.best() == {"AIME24": (0.25, 10), "AIME25": (0.15, 5)}
    assert "| **Avg of maxima** | 20.00 | |" in h.best_table()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10, 15]
    assert EvalHistory().best_table() == "(no evaluations recorded)"


def test_evaluator_schedule():
    ev = Evaluator([], None, every=5, before_train=True)
    assert [s for s in range(12) if ev.due(s)] == [0, 5, 10]
    # the last step is evaluated too (it is saved: the weights the run ends with), unless every is 0
    assert [s for s in range(13) if ev.due(s, last=s == 12)] == [0, 5, 10, 12]
    assert not Evaluator([], None, every=0, before_train=False).due(0)
    assert not Evaluator([], None, every=0, before_train=False).due(12, last=True)
    with pytest.raises(ValueError):
        Evaluator([], None, every=-1)


def test_benchmark_names():
    assert benchmark_names(["/d/aime24.parquet", "x/math500.jsonl"]) == {
        "aime24": "/d/aime24.parquet",
        "math500": "x/math500.jsonl",
    }
    assert benchmark_names({"AIME24": "a.parquet"}) == {"AIME24": "a.parquet"}
    with pytest.raises(DataError, match="both get the name 'test'"):
        benchmark_names(["a/test.parquet", "b/test.parquet"])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_hf_model(tmp_path_factory.mktemp("tok")))


def _row(question, answer):
    return {
        "data_source": "math_dapo_x",
        "prompt": [{"role": "user", "content": question}],
        "reward_model": {"style": "rule", "ground_truth": answer},
    }


def test_bad_benchmark_row_names_benchmark_file_and_row(tmp_path, tokenizer):
    path = tmp_path / "amc.jsonl"
    rows = [_row("1 + 1?", "2"), _row("2 + 2?", "4"), {"data_source": "math_dapo_x", "prompt": "3 + 3?"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match=r"benchmark 'AMC': .*amc\.jsonl row 2: ground truth"):
        load_benchmarks({"AMC": path}, tokenizer)

    pq_path = tmp_path / "minerva.parquet"
    pq.write_table(pa.Table.from_pylist([_row("1 + 1?", "2"), {**_row("x", "1"), "prompt": []}]), pq_path)
    with pytest.raises(DataError, match=r"benchmark 'minerva': .*minerva\.parquet row 1: 'prompt'"):
        load_benchmarks([pq_path], tokenizer)


def test_long_prompts_fail_by_default_and_max_prompts_keeps_the_first(tmp_path, tokenizer):
    path = tmp_path / "olympiad.jsonl"
    rows = [_row(f"what is {i} + {i}?", str(2 * i)) for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match="over data.max_prompt_length=3"):
        load_benchmarks([path], tokenizer, max_prompt_length=3)
    (bench,) = load_benchmarks([path], tokenizer, max_prompts=2)
    assert bench.name == "olympiad" and [p.ground_truth for p in bench.prompts] == ["0", "2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "4", "--pass-k", "8"], "--pass-k values must be in [1, --k=4]"),
        (["--top-p", "0"], "0 < top_p <= 1"),
        (["--k", "0"], "n and max_new_tokens must be >= 1"),
        (["--names", "A", "B"], "--names gives 2 names for 1 benchmark files"),
    ],
)
def test_cli_rejects_bad_arguments_before_loading_anything(extra, message, capsys):
    from megatron_hapo.cli.eval import main

    assert main(["--model", "/nonexistent", "--benchmarks", "/nonexistent/a.parquet", *extra]) == 2
    assert message in capsys.readouterr().err


def test_comparison_table_has_a_row_per_model_and_the_best_in_bold():
    def named(model, values):
        r = _result(values)
        return EvalResult(replace(r.settings, model=model), r.benchmarks)

    table = comparison_table(
        [named("step_100", {"A": 0.2, "B": 0.5}), named("step_200", {"A": 0.3, "B": 0.1})]
    )
    assert table.splitlines() == [
        "| model | A avg@8 | B avg@8 | Avg |",
        "| --- | --- | --- | --- |",
        "| step_100 | 20.00 | **50.00** | **35.00** |",
        "| step_200 | **30.00** | 10.00 | 20.00 |",
    ]
    with pytest.raises(ValueError, match="same benchmarks"):
        comparison_table([named("a", {"A": 0.2}), named("b", {"B": 0.2})])
