"""compute_score: the DAPO scorer, the Math-Verify scorer, routing, overlong shaping."""

from __future__ import annotations

import time

import pytest

from megatron_hapo.rewards import (
    DEFAULT_SCORER,
    apply_overlong,
    compute_score,
    overlong_penalty,
    registered,
    resolve_scorer,
)

from . import helper_scorers  # noqa: F401  (registers test_echo for routing tests)


@pytest.mark.parametrize(
    "response, gt, score, pred",
    [
        ("reasoning...\nAnswer: 34", "34", 1.0, "34"),
        ("Answer: 12\nlater: Answer: 34", "34", 1.0, "34"),  # the last Answer line counts
        ("Answer: $\\frac{1}{2}$", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
        ("Answer: 1,000 dollars", "1000", 1.0, "1000"),
        ("Answer: 0.5", "\\frac{1}{2}", 1.0, "0.5"),  # HAPO's Math-Verify fallback
        ("Answer: 35", "34", -1.0, "35"),
        ("The answer is 34", "34", -1.0, "[INVALID]"),  # no Answer line, no fallback
        # verl's math_dapo.py deletes no "ft": \left and \infty survive the normalisation
        ("Answer: \\left(-\\infty, 3\\right)", "(-\\infty,3)", 1.0, "\\left(-\\infty,3\\right)"),
        ("Answer: x \\in [2, \\infty)", "[2,\\infty)", 1.0, "x\\in[2,\\infty)"),
    ],
)
def test_dapo_scorer(response, gt, score, pred):
    out = compute_score("math_dapo", response, gt)
    assert out["score"] == score and out["acc"] == (score > 0) and out["pred"] == pred
    assert out["timed_out"] is False and out["error"] is None


def test_dapo_scorer_looks_only_at_the_tail():
    early = "Answer: 34\n" + "x" * 400
    assert compute_score("math_dapo", early, "34")["pred"] == "[INVALID]"


@pytest.mark.parametrize(
    "response, gt, score",
    [
        ("so the result is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{2x+2}", "2(x+1)", 1.0),
        ("$x = 5$", "5", 1.0),
        ("\\boxed{3}", "4", 0.0),
        ("I don't know", "4", 0.0),
    ],
)
def test_math_verify_scorer(response, gt, score):
    out = compute_score("aime24", response, gt)
    assert out["score"] == score and out["acc"] == bool(score) and not out["timed_out"]


def test_math_verify_unparsable_gold_is_an_error_not_a_wrong_answer():
    out = compute_score("x", "\\boxed{1}", " ")
    assert out["score"] == 0.0 and out["error"] and "could not be parsed" in out["error"]


def test_routing_rule():
    assert resolve_scorer("math_dapo").name == "dapo"
    assert resolve_scorer("math_dapo_tiny_arith").name == "dapo"  # "math_dapo" in data_source
    assert resolve_scorer("aime24").name == DEFAULT_SCORER == "math_verify"
    assert resolve_scorer("echo_x").name == "test_echo"  # a registered match wins over the default
    assert resolve_scorer("math_dapo", scorer="math_verify").name == "math_verify"  # forced
    with pytest.raises(KeyError, match="no reward scorer named 'nope'.*registered"):
        resolve_scorer("x", scorer="nope")
    assert {"dapo", "math_verify"} <= set(registered())


def test_extra_info_reaches_the_scorer():
    out = compute_score("echo", "a", "a", scorer="test_echo", index=3)
    assert out["acc"] is True


@pytest.mark.parametrize(
    "response, gt",
    [
        ("Answer: 9^{9^{9^{9}}}", "1"),  # huge power
        ("Answer: (10^6)!", "5"),
        ("Answer: " + "\\frac{1}{" * 60 + "2" + "}" * 60, "1"),  # deep fractions (fits the 300-char tail)
    ],
)
def test_adversarial_answers_finish_within_the_deadline_in_process(response, gt):
    t0 = time.monotonic()
    out = compute_score("math_dapo", response, gt, timeout_s=2.0, verify_timeout_s=1)
    assert time.monotonic() - t0 < 4.0
    assert out["score"] == -1.0 and not out["acc"]


def test_overlong_penalty_formula():
    # L_max 20, B 4: no penalty up to 16 tokens, then linear to -f at 20.
    assert overlong_penalty(10, 20, 4) == 0.0
    assert overlong_penalty(16, 20, 4) == 0.0
    assert overlong_penalty(18, 20, 4) == -0.5
    assert overlong_penalty(20, 20, 4, penalty_factor=2.0) == -2.0
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_penalty(1, 20, 0)


def test_apply_overlong_lowers_score_not_acc():
    scores = [compute_score("math_dapo", "Answer: 1", "1"), compute_score("math_dapo", "Answer: 2", "1")]
    shaped = apply_overlong(scores, [19, 5], max_length=20, buffer_len=4)
    assert shaped[0]["score"] == pytest.approx(0.25) and shaped[0]["acc"] is True
    assert shaped[0]["overlong_penalty"] == pytest.approx(-0.75)
    assert shaped[1]["score"] == -1.0 and shaped[1]["overlong_penalty"] == 0.0
    assert scores[0]["score"] == 1.0  # inputs untouched
    with pytest.raises(ValueError, match="2 scores but 1 lengths"):
        apply_overlong(scores, [1], 20, 4)
