"""Final-answer extraction and normalisation of the Minerva paper (Lewkowycz et al. 2022, appendix D),
as used by the DAPO math scorer: answers are compared as strings after this normalisation.

``normalize_final_answer("\\$1,000 dollars") == "1000"``, ``normalize_final_answer("\\boxed{\\frac12}") ==
"\\frac{1}{2}"``. Behaviour matters more than elegance here: the reward a policy is trained on must
match the published scorer, so the steps and their order follow the paper's listing as verl's
``math_dapo.py`` (the released HAPO's scorer) implements it, whose deleted words lack the paper's "ft".
"""

from __future__ import annotations

import re

INVALID = "[INVALID]"

# The last "Answer: ..." line (case-insensitive), as the DAPO prompt asks for.
ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")

# (old, new) string replacements, applied in order.
_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)

# Units and filler words deleted wherever they occur (so "5 square units" and "5" compare equal): verl's
# math_dapo.py list, which the released HAPO scores with. The Minerva paper's listing also has "ft", which
# deleted inside \left and \infty ("\left(-\infty, 3\right)" became "\le(-\iny,3\right)"), so that
# such answers failed the string match and the Math-Verify fallback both.
_DELETED: tuple[str, ...] = (
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
    "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
    "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
    r",\!", "{,}", '"', "\\dots",
)  # fmt: skip

# Regex rewrites: keep the inside of $...$, \text{}, \textbf{}, \overline{}, \boxed{}; expand \fracab, \sqrta.
_REWRITES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(.*?)(\$)(.*?)(\$)(.*)"), r"$\3$"),
    (re.compile(r"(\\text\{)(.*?)(\})"), r"\2"),
    (re.compile(r"(\\textbf\{)(.*?)(\})"), r"\2"),
    (re.compile(r"(\\overline\{)(.*?)(\})"), r"\2"),
    (re.compile(r"(\\boxed\{)(.*)(\})"), r"\2"),
    (re.compile(r"(frac)([^{])(.)"), r"frac{\2}{\3}"),
    (re.compile(r"(sqrt)([^{])"), r"sqrt{\2}"),
)


def normalize_final_answer(answer: str) -> str:
    """Normalise a final answer for exact string comparison (Minerva's rules, in the paper's order)."""
    answer = answer.split("=")[-1]  # "x = 5" -> "5"
    for old, new in _REPLACEMENTS:
        answer = answer.replace(old, new)
    for word in _DELETED:
        answer = answer.replace(word, "")
    for pattern, repl in _REWRITES:
        answer = pattern.sub(repl, answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():  # 100,000 -> 100000
        answer = answer.replace(",", "")
    return answer.strip()


def extract_answer_line(text: str) -> str | None:
    """The text after the last "Answer:" in ``text``, or None if there is none."""
    matches = ANSWER_LINE.findall(text)
    return matches[-1] if matches else None
