"""Fault injection, the verifier: model outputs built to hang or crash the math verifier and the scorers
(huge numbers, deep LaTeX, pathological regex inputs, enormous strings, unicode, nested ``\\boxed``,
sympy hazards, code injection) are each scored within the call deadline, none earns credit it should
not, and the scorer pool survives the whole corpus (issue 17, delivery item 2).

``tests/rewards/test_pool.py`` covers the pool's mechanics (deadlines, killed and crashed workers); this
is the corpus, as a regression test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from megatron_hapo.rewards import ScoreRequest, ScorerPool

CALL_TIMEOUT, GRACE, WORKERS = 1.0, 0.5, 2
SENTINEL = Path("/tmp/hapo_verifier_pwned")  # created only if an answer's text were executed
DAPO, MV = "math_dapo", "aime24"  # the DAPO scorer (+1/-1) and the Math-Verify scorer (1/0)


def _nest(open_: str, inner: str, close: str, depth: int) -> str:
    return open_ * depth + inner + close * depth


# (name, data_source, response, ground truth, expected acc: False = must not be credited, None = either)
CORPUS: list[tuple[str, str, str, str, bool | None]] = [
    # huge numbers
    ("power tower boxed", MV, "\\boxed{9^{9^{9^{9}}}}", "1", False),
    ("power tower answer", DAPO, "Answer: 9^{9^{9^{9^{9}}}}", "3", False),
    ("two tower", DAPO, "Answer: 2^{2^{2^{2^{2^{2}}}}}", "4", False),
    ("5000 digits", DAPO, "Answer: " + "9" * 5000, "9", False),
    ("100k digits boxed", MV, "\\boxed{" + "9" * 100_000 + "}", "9", False),
    ("factorial of a million", DAPO, "Answer: (10^{6})!", "5", False),
    ("float overflow", MV, "\\boxed{1e999999}", "1", False),
    # Math-Verify's LaTeX parser reads "$10**10**10**10$" as 10 (and "$2**3$" as 2): a library quirk, kept
    # (the reward must match the published scorer); here only the bound matters
    ("python power", MV, "$10**10**10**10$", "10", None),
    # deeply nested LaTeX
    ("300 nested fracs", MV, "\\boxed{" + _nest("\\frac{1}{", "2", "}", 300) + "}", "1", False),
    ("500 nested sqrt", MV, "\\boxed{" + _nest("\\sqrt{", "2", "}", 500) + "}", "2", False),
    ("10k braces", MV, "\\boxed{" + _nest("{", "7", "}", 10_000) + "}", "8", False),
    ("1000 left-right", MV, "$" + _nest("\\left(", "7", "\\right)", 1000) + "$", "8", False),
    ("unclosed boxes", MV, "\\boxed{" * 1000 + "7", "7", None),
    ("5000 open fracs", DAPO, "Answer: " + "\\frac{" * 5000, "1", False),
    ("nested exponents", MV, "\\boxed{" + _nest("x^{", "x", "}", 200) + "}", "x", False),
    # pathological inputs for the regexes (Minerva normalisation, Answer line)
    ("10k answer labels", DAPO, "Answer:" * 10_000, "1", False),
    ("answer then 10k dollars", DAPO, "Answer: " + "$" * 10_000, "1", False),
    ("dollar pairs", DAPO, "Answer: " + "$x" * 5000, "x", False),
    ("10k text", DAPO, "Answer: " + "\\text{" * 5000 + "1", "2", False),
    ("frac tokens", DAPO, "Answer: " + "frac" * 10_000, "1", False),
    ("sqrt tokens", DAPO, "Answer: " + "sqrt" * 10_000, "1", False),
    ("10k equals", DAPO, "Answer: " + "=" * 10_000, "1", False),
    ("100k spaces", DAPO, "Answer:" + " " * 100_000 + "7", "7", None),
    ("overline boxed textbf", DAPO, "Answer: " + "\\overline{\\textbf{\\boxed{" * 2000 + "7", "7", None),
    ("commas", DAPO, "Answer: " + "1," * 20_000 + "1", "1", False),
    # enormous strings
    ("10 MB of x", MV, "x" * 10_000_000, "1", False),
    ("1 MB of digits", MV, "7" * 1_000_000, "7", None),
    ("a million newlines", DAPO, "\n" * 1_000_000 + "Answer: 7", "7", None),
    ("100k backslashes", MV, "\\" * 100_000, "1", False),
    ("2 MB answer line", DAPO, "Answer: " + "1+" * 1_000_000 + "1", "2", False),
    # unicode
    ("fullwidth digit", DAPO, "Answer: ５", "5", None),
    ("vulgar fraction", MV, "\\boxed{½}", "\\frac{1}{2}", None),
    ("bidi overrides", DAPO, "Answer: \u202e7\u202c", "7", None),
    ("zero-width joiners", MV, "\\boxed{7" + "\u200d" * 10_000 + "}", "7", None),
    ("combining marks", DAPO, "Answer: 7" + "\u0301" * 10_000, "7", None),
    ("math bold digit", DAPO, "Answer: 𝟕", "7", None),
    ("emoji", MV, "\\boxed{🎉" * 1000 + "}", "1", False),
    ("nul and controls", DAPO, "Answer: 7\x00\x07\x1b[31m", "7", None),
    ("lone surrogate escapes", MV, "\\boxed{\\udcff}", "1", False),
    ("lone surrogate", DAPO, "Answer: \udcff", "1", False),
    # nested / odd \boxed
    ("triple boxed", MV, "\\boxed{\\boxed{\\boxed{7}}}", "7", None),
    ("1000 nested boxed", MV, "\\boxed{" * 1000 + "7" + "}" * 1000, "7", None),
    ("empty boxed", MV, "\\boxed{}", "7", False),
    ("boxed without braces", MV, "\\boxed 7 \\boxed", "8", False),
    ("10k boxed answers", MV, "\\boxed{1} " * 10_000, "7", False),
    # sympy hazards
    ("improper integral", MV, "\\boxed{\\int_0^\\infty e^{-x^2} dx}", "1", False),
    ("divergent sum", MV, "\\boxed{\\sum_{n=1}^{\\infty} \\frac{1}{n}}", "1", False),
    (
        "big matrix",
        MV,
        "\\boxed{\\begin{pmatrix}" + "\\\\".join(["&".join(["x"] * 60)] * 60) + "\\end{pmatrix}}",
        "1",
        False,
    ),  # fmt: skip
    ("division by zero", MV, "\\boxed{\\frac{1}{0}}", "1", False),
    ("infinity minus infinity", MV, "\\boxed{\\infty - \\infty}", "0", False),
    ("10k-element set", MV, "\\boxed{\\{" + ",".join(map(str, range(10_000))) + "\\}}", "1", False),
    ("equation chain", MV, "$" + "=".join(f"x_{{{i}}}" for i in range(2000)) + "$", "1", False),
    ("polynomial of 5000 terms", MV, "$" + "+".join(f"x^{{{i}}}" for i in range(5000)) + "$", "1", False),
    # code injection: the answer is text, never executed
    ("python import", DAPO, f"Answer: __import__('os').system('touch {SENTINEL}')", "0", False),
    ("sympify injection", MV, f"$__import__('os').system('touch {SENTINEL}')$", "0", False),
    ("lambda bomb", MV, "\\boxed{(lambda f: f(f))(lambda f: f(f))}", "1", False),
]
SANITY = [
    ScoreRequest(DAPO, "work\nAnswer: 7", "7"),
    ScoreRequest(MV, "so \\boxed{\\frac{1}{2}}", "0.5"),
    ScoreRequest(DAPO, "Answer: 8", "7"),
]


@pytest.mark.slow
def test_adversarial_outputs_are_bounded_and_the_pool_survives(fault_figures):
    SENTINEL.unlink(missing_ok=True)
    with ScorerPool(WORKERS, call_timeout_s=CALL_TIMEOUT, verify_timeout_s=1, kill_grace_s=GRACE) as pool:
        pool.wait_ready()
        requests = [ScoreRequest(src, resp, gold) for _, src, resp, gold, _ in CORPUS]
        t0 = time.monotonic()
        batch = pool.score(requests)
        wall = time.monotonic() - t0
        after = pool.score(SANITY)  # the pool still scores correctly after the corpus
        alive = len(pool.worker_pids) == WORKERS
    # Each answer is bounded by the deadline + the kill grace (+ a replacement worker's start-up).
    bound = len(CORPUS) * (CALL_TIMEOUT + GRACE) / WORKERS + 5 * batch.num_workers_replaced + 10
    wrong = [
        name
        for (name, *_, expected), r in zip(CORPUS, batch.results, strict=True)
        if r is None or (expected is not None and r["acc"] != expected) or r["error"] is not None
    ]
    survived = alive and [r["acc"] for r in after.results] == [True, True, False]
    ok = len(CORPUS) - len(wrong) if survived and wall < bound and not SENTINEL.exists() else 0
    fault_figures("verifier", ok, len(CORPUS), "adversarial outputs bounded, pool survived")
    assert not SENTINEL.exists(), "an answer's text was executed"
    assert wall < bound, (wall, bound, batch.num_timeouts, batch.num_workers_replaced)
    assert survived, (alive, after.results)
    assert not wrong, [(n, r) for (n, *_), r in zip(CORPUS, batch.results, strict=True) if n in wrong]
    assert len(CORPUS) >= 50
