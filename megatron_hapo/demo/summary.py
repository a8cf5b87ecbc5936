"""The closing summary of a demo run, from its metrics rows (``metrics.jsonl``).

- held-out accuracy before and after RL: ``eval/<benchmark>/avg@k`` at its first logged step (step 0 with
  ``eval.before_train``) and its last (per benchmark; the evaluator's cross-benchmark ``eval/avg@k`` is
  left out);
- response length: mean of ``response_length/mean`` over the first and the last fifth of the steps;
- entropy trajectory: ``entropy/mean`` averaged over five equal parts of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EVAL_PREFIX = "eval/"


@dataclass
class DemoSummary:
    heldout: dict[str, tuple[int, float, int, float]] = field(default_factory=dict)  # key -> (s0, a0, s1, a1)
    length: tuple[float, float] = (float("nan"), float("nan"))  # first fifth, last fifth (tokens)
    entropy: list[float] = field(default_factory=list)  # mean per fifth of the run (nats)
    steps: int = 0

    def gain(self, key: str | None = None) -> float:
        """Held-out accuracy after minus before (``key``: one eval metric; default the only one)."""
        if not self.heldout:
            raise ValueError("no held-out evaluation in the run (eval.benchmarks empty or eval.every 0)")
        if key is None:
            if len(self.heldout) != 1:
                raise ValueError(f"several held-out metrics, name one of {sorted(self.heldout)}")
            key = next(iter(self.heldout))
        _, before, _, after = self.heldout[key]
        return after - before


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(rows: list[dict]) -> DemoSummary:
    """The summary of the module docstring; ValueError when ``rows`` has no training step."""
    train = [r for r in rows if r.get("step", 0) >= 1 and "response_length/mean" in r]
    if not train:
        raise ValueError("no training step in the metrics rows")
    out = DemoSummary(steps=max(r["step"] for r in train))
    keys = sorted(
        {k for r in rows for k in r if k.startswith(EVAL_PREFIX) and k.count("/") == 2 and "/avg@" in k}
    )
    for key in keys:
        pts = sorted((r["step"], r[key]) for r in rows if r.get(key) is not None)
        out.heldout[key] = (pts[0][0], pts[0][1], pts[-1][0], pts[-1][1])
    q = max(1, len(train) // 5)
    lengths = [r["response_length/mean"] for r in train]
    out.length = (_mean(lengths[:q]), _mean(lengths[-q:]))
    ent = [r["entropy/mean"] for r in train if "entropy/mean" in r]
    parts = min(5, len(ent))
    out.entropy = [_mean(ent[i * len(ent) // parts : (i + 1) * len(ent) // parts]) for i in range(parts)]
    return out


def format_summary(s: DemoSummary) -> list[str]:
    """Human-readable lines of ``s``."""
    lines = []
    for key, (s0, a0, s1, a1) in s.heldout.items():
        lines.append(
            f"held-out accuracy {key[len(EVAL_PREFIX) :]}: {a0:.3f} (step {s0}) -> {a1:.3f} (step {s1}), "
            f"{a1 - a0:+.3f}"
        )
    if not s.heldout:
        lines.append("held-out accuracy: not evaluated (eval.benchmarks is empty)")
    l0, l1 = s.length
    lines.append(f"response length: {l0:.1f} -> {l1:.1f} tokens (first vs last fifth of {s.steps} steps)")
    lines.append("entropy by fifth of the run (nats): " + " -> ".join(f"{e:.3f}" for e in s.entropy))
    return lines
