"""Minerva answer normalisation and "Answer:" extraction, as the DAPO scorer uses them."""

from __future__ import annotations

import pytest

from megatron_hapo.rewards.minerva import extract_answer_line, normalize_final_answer


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("42", "42"),
        (" 42 ", "42"),
        ("x = 5", "5"),
        ("\\$1,000", "1000"),
        ("100,000", "100000"),
        ("1,2", "12"),  # commas between digits are thousands separators
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("\\boxed{17}", "17"),
        ("\\text{(A)}", "(A)"),
        ("\\textbf{7}", "7"),
        ("5 square units", "5"),
        ("90^\\circ", "90"),
        ("12 dollars", "12"),
        (
            "3 \\text{ and } 4",
            "34",
        ),  # "and" -> "," then "3,4" reads as a thousands separator (Minerva's rule)
        ("an apple", "apple"),  # articles removed
    ],
)
def test_normalize_final_answer(raw, expected):
    assert normalize_final_answer(raw) == expected


def test_extract_takes_the_last_answer_line_case_insensitively():
    text = "answer: 1\nworking...\nANSWER :  \\frac{3}{4}\nthanks"
    assert extract_answer_line(text) == "\\frac{3}{4}"
    assert extract_answer_line("no final line") is None
