"""No scorer gives credit for an empty prediction (issue 17, bug 3): the DAPO scorer gave +1 to
``Answer: dollars`` against an empty ground truth because both normalise to ""."""

from __future__ import annotations

import pytest

from megatron_hapo.rewards import compute_score, ground_truth_problem

EMPTY_ANSWERS = ["Answer: dollars", "Answer: $ $", "Answer: \\text{}", "Answer: units", "", "   ", "Answer:"]
GOLDS = ["", " ", "dollars", "5"]


@pytest.mark.parametrize("gold", GOLDS)
@pytest.mark.parametrize("response", EMPTY_ANSWERS)
@pytest.mark.parametrize("source", ["math_dapo", "aime24"])  # the DAPO and the Math-Verify scorer
def test_an_empty_prediction_earns_nothing(source, response, gold):
    out = compute_score(source, response, gold)
    assert out["acc"] is False and out["score"] <= 0.0, out


def test_dapo_scorer_still_credits_a_real_answer():
    assert compute_score("math_dapo", "Answer: 5 dollars", "5")["score"] == 1.0


@pytest.mark.parametrize(
    "source, gold, reason",
    [
        ("math_dapo", "", "is empty"),
        ("aime24", " \t", "is empty"),
        ("math_dapo", "dollars", "DAPO scorer's normalisation"),
        ("aime24", "}{", "Math-Verify cannot parse"),
    ],
)
def test_unscorable_ground_truths_are_named(source, gold, reason):
    assert reason in ground_truth_problem(source, gold)


def test_scorable_ground_truths_pass_and_custom_scorers_are_not_second_guessed():
    assert (
        ground_truth_problem("math_dapo", "\\frac{1}{2}") is None
        and ground_truth_problem("aime24", "34") is None
    )
    assert ground_truth_problem("x", "dollars", scorer="registered_only_in_the_workers") is None
    assert "is empty" in ground_truth_problem("x", "", scorer="registered_only_in_the_workers")
