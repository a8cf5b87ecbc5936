"""The demo's reasoning task: deterministic, disjoint splits, correct answers and scratchpads, lengths in the
promised range, and the imperfect SFT traces."""

import random
import re
from collections import Counter

import pytest

from megatron_hapo.demo import task
from megatron_hapo.demo.traces import TraceNoise, noisy_solution


@pytest.fixture(scope="module")
def rows():
    return task.make_rows()


def test_generation_is_deterministic_and_seed_dependent(rows):
    assert task.make_rows() == rows
    assert task.make_rows(seed=1)["train"] != rows["train"]


def test_checked_in_files_match_the_generator():
    assert task.differences(task.DATA_DIR) == []


def test_splits_are_disjoint_as_multisets_and_cover_every_level(rows):
    keys = {s: [tuple(sorted(r["extra_info"]["terms"])) for r in rows[s]] for s in rows}
    assert not set(keys["train"]) & set(keys["heldout"])
    assert len(set(keys["train"])) == len(keys["train"])  # no duplicates either
    for split, per_level in (("train", task.NUM_TRAIN_PER_LEVEL), ("heldout", task.NUM_HELDOUT_PER_LEVEL)):
        assert Counter(r["extra_info"]["level"] for r in rows[split]) == {n: per_level for n in task.LEVELS}


def test_answers_and_reference_scratchpads_are_correct(rows):
    for r in rows["train"] + rows["heldout"]:
        terms = r["extra_info"]["terms"]
        assert r["reward_model"]["ground_truth"] == str(sum(terms))
        assert task.expression(terms) in r["prompt"][0]["content"]
        lines = task.reference_solution(terms).splitlines()
        assert len(lines) == len(terms)  # n - 1 steps + the answer line
        for line in lines[:-1]:
            lhs, rhs = line.split("=")
            assert sum(int(x) for x in lhs.split("+")) == int(rhs)
        assert lines[-1] == f"Answer: {sum(terms)}"


def test_the_routed_scorer_checks_only_the_final_answer():
    from megatron_hapo.rewards import compute_score

    def acc(response: str) -> bool:
        return compute_score(task.DATA_SOURCE, response, "103")["acc"]

    assert acc(task.reference_solution([12, 34, 57]))
    assert acc("12+34=40\n40+57=103\nAnswer: 103")  # wrong steps, right answer: still correct
    assert not acc("12+34=46\n46+57=103")  # right steps, no answer line
    assert not acc("12+34=46\n46+57=104\nAnswer: 104")


def test_reference_responses_are_19_to_120_tokens_and_grow_with_the_level(rows, tmp_path):
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    tok_dir = make_tiny_hf_model(tmp_path, family="qwen2", vocab_size=320, corpus=["Answer: 12+34=46"] * 10)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    by_level: dict[int, list[int]] = {}
    for r in rows["heldout"]:
        n = len(tok(task.reference_solution(r["extra_info"]["terms"])).input_ids) + 1  # + EOS
        by_level.setdefault(r["extra_info"]["level"], []).append(n)
    # 19: a level-3 sum of one-digit terms ("2+3=5\n5+4=9\nAnswer: 9" + EOS); the issue asks for about 20-120
    assert min(min(v) for v in by_level.values()) >= 19
    assert max(max(v) for v in by_level.values()) <= 120
    means = [sum(by_level[n]) / len(by_level[n]) for n in task.LEVELS]
    assert means == sorted(means) and means[-1] > 1.8 * means[0]


def test_noisy_traces_skip_err_and_drop_answers_at_the_given_rates():
    rng = random.Random(0)
    terms = [12, 34, 57, 21, 9, 40]
    assert noisy_solution(terms, TraceNoise(), rng) == task.reference_solution(terms)
    traces = [
        noisy_solution(terms, TraceNoise(skip=0.3, error=0.2, no_answer=0.25), rng) for _ in range(2000)
    ]
    no_answer = sum("Answer:" not in t for t in traces) / len(traces)
    assert abs(no_answer - 0.25) < 0.04
    lines = [line for t in traces for line in t.splitlines() if "=" in line]
    skipped = sum(line.count("+") == 2 for line in lines) / len(lines)
    wrong = sum(
        sum(int(x) for x in line.split("=")[0].split("+")) != int(line.split("=")[1]) for line in lines
    )
    assert 0.15 < skipped < 0.4
    assert abs(wrong / len(lines) - 0.2) < 0.04
    # the answer line always repeats the last running total as written (errors propagate)
    for t in traces:
        if "Answer:" in t:
            last, answer = t.splitlines()[-2:]
            assert re.sub("Answer: ", "", answer) == last.split("=")[1]


def test_bad_noise_is_refused_with_the_field_name():
    with pytest.raises(ValueError, match="TraceNoise.skip"):
        TraceNoise(skip=1.5)


def test_probe_counts_a_line_with_three_numbers_as_a_skip():
    from megatron_hapo.demo.probe import skipped

    assert skipped("12+34=46\n46+57+21=124\nAnswer: 124")
    assert not skipped(task.reference_solution([12, 34, 57, 21]))
