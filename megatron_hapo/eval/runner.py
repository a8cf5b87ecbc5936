"""``evaluate``: sample k answers per benchmark prompt from a rollout engine, score them, and compute
avg@k / pass@k per benchmark (definitions in :mod:`megatron_hapo.eval.metrics`).

Works with any :class:`~megatron_hapo.rollout.types.RolloutEngine` (the in-process SGLang engine, a
fleet) and is what both ``hapo-eval`` and the trainer's periodic evaluation call. Accuracy is the
scorer's binary ``acc`` (the DAPO scorer for ``math_dapo`` sources, Math-Verify otherwise); the shaped
reward is never used as accuracy, and no overlong penalty is applied (HAPO_SPEC B13).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from megatron_hapo.data import PromptSample, RowKeys
from megatron_hapo.eval.benchmarks import Benchmark, load_benchmarks
from megatron_hapo.eval.journal import AnsweredPrompt, AnswerJournal
from megatron_hapo.eval.metrics import BenchmarkMetrics, SampleOutcome, benchmark_metrics
from megatron_hapo.rewards import AUTO, Deadline, Score, ScoreRequest, ScorerPool, resolve_scorer, run_scorer
from megatron_hapo.rollout.types import GenerationParams, RolloutEngine, RolloutSample, sample_seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    """How the answers were sampled (recorded with every result)."""

    k: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    model: str | None = None
    weight_version: str | None = None
    step: int | None = None
    seed: int | None = None  # every answer seeded from it (prompt_seed); None = unseeded


@dataclass
class EvalResult:
    """Per-benchmark metrics of one evaluation, in benchmark order.

    samples: per benchmark, one record per answer (prompt, sample, response, pred, acc, score, length,
    finish_reason, timed_out, error) when ``evaluate(keep_samples=True)``; else None.
    """

    settings: EvalSettings
    benchmarks: dict[str, BenchmarkMetrics]
    wall_s: float = 0.0
    samples: dict[str, list[dict[str, Any]]] | None = None

    @property
    def average(self) -> float:
        """The plain mean of avg@k over benchmarks (the paper's "Avg" column)."""
        return sum(m.avg_at_k for m in self.benchmarks.values()) / len(self.benchmarks)

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Flat scalars for the trainer's metrics log: ``eval/<bench>/avg@k``, ``.../pass@j``, ..."""
        k = self.settings.k
        out: dict[str, float] = {}
        for name, m in self.benchmarks.items():
            p = f"{prefix}{name}/"
            out[f"{p}avg@{k}"] = m.avg_at_k
            out.update({f"{p}pass@{j}": v for j, v in m.pass_at.items()})
            out[f"{p}response_length"] = m.mean_response_length
            out[f"{p}truncation_rate"] = m.truncation_rate
            out[f"{p}timeouts"] = float(m.num_timeouts)
            out[f"{p}errors"] = float(m.num_errors)
        out[f"{prefix}avg@{k}"] = self.average
        out[f"{prefix}wall_s"] = self.wall_s
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "settings": asdict(self.settings),
            "benchmarks": {name: m.to_dict() for name, m in self.benchmarks.items()},
            "average_avg_at_k": self.average,
            "wall_s": self.wall_s,
        }
        if self.samples is not None:
            out["samples"] = self.samples
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """The inverse of :meth:`to_dict` (``average_avg_at_k`` is recomputed, not read)."""
        settings = dict(data["settings"], stop=tuple(data["settings"]["stop"]))
        benchmarks = {
            name: BenchmarkMetrics(**dict(m, pass_at={int(j): v for j, v in m["pass_at"].items()}))
            for name, m in data["benchmarks"].items()
        }
        return cls(EvalSettings(**settings), benchmarks, data["wall_s"], data.get("samples"))

    def to_json(self, path: str | Path | None = None, indent: int = 2) -> str:
        """The result as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def table(self) -> str:
        """Markdown table: one row per benchmark (accuracies in percent) and the "Avg" row."""
        k = self.settings.k
        pass_ks = sorted({j for m in self.benchmarks.values() for j in m.pass_at})
        head = ["benchmark", "prompts", f"avg@{k}", *(f"pass@{j}" for j in pass_ks)]
        head += ["mean len", "truncated %", "timeouts", "errors"]
        rows = [head, ["---"] * len(head)]
        for name, m in self.benchmarks.items():
            rows.append(
                [name, str(m.num_prompts), _pct(m.avg_at_k)]
                + [_pct(m.pass_at[j]) if j in m.pass_at else "" for j in pass_ks]
                + [f"{m.mean_response_length:.1f}", _pct(m.truncation_rate)]
                + [str(m.num_timeouts), str(m.num_errors)]
            )
        rows.append(["**Avg**", "", _pct(self.average)] + [""] * (len(head) - 3))
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def comparison_table(results: Sequence[EvalResult]) -> str:
    """Markdown: one row per result (labelled by its model), avg@k per benchmark and their mean ("Avg"), the
    best of each column in bold. The results must cover the same benchmarks with the same k."""
    first = results[0]
    names, k = list(first.benchmarks), first.settings.k
    for r in results[1:]:
        if list(r.benchmarks) != names or r.settings.k != k:
            raise ValueError("comparison_table: every result needs the same benchmarks and k")
    columns = [[r.benchmarks[n].avg_at_k for r in results] for n in names] + [[r.average for r in results]]
    cells = [[f"**{_pct(v)}**" if v == max(col) else _pct(v) for v in col] for col in columns]
    rows = [["model", *(f"{n} avg@{k}" for n in names), "Avg"]]
    rows.append(["---"] * len(rows[0]))
    rows += [[str(r.settings.model), *(col[i] for col in cells)] for i, r in enumerate(results)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def score_answers(
    requests: Sequence[ScoreRequest], scorer: ScorerPool | None, *, timeout_s: float = 5.0
) -> list[Score]:
    """Score answers with ``scorer`` (a :class:`ScorerPool`), or in this process when None.

    In-process scoring routes by data_source like the pool (``auto``), with a ``timeout_s`` deadline per
    answer; it must run in the main thread (math-verify's timeouts use SIGALRM) and cannot stop C code
    stuck past its deadline: use a pool for untrusted or large batches.
    """
    if scorer is not None:
        return scorer.score(requests).results
    out = []
    for r in requests:
        entry = resolve_scorer(r.data_source, r.scorer or AUTO)
        out.append(
            run_scorer(entry.name, r.response, str(r.ground_truth), dict(r.extra), Deadline(timeout_s))
        )
    return out


def prompt_seed(seed: int, benchmark: str, index: int) -> int:
    """The seed of prompt ``index`` of ``benchmark`` in an evaluation seeded ``seed`` (its answer j is drawn
    with ``sample_seed(prompt_seed(...), j)``). It depends on nothing else, so every evaluation of a run
    draws the same way for the same prompt (checkpoints are compared on common random numbers), whatever
    ``batch_prompts`` or the other benchmarks; and the "eval:" prefix keeps it apart from the training
    prompts' seeds (``sample_seed(trainer.seed, group)``)."""
    return sample_seed(f"eval:{seed}:{benchmark}", index)


def _evaluate_one(
    engine: RolloutEngine,
    tokenizer: Any,
    bench: Benchmark,
    params: GenerationParams,
    scorer: ScorerPool | None,
    batch_prompts: int,
    pass_ks: Sequence[int],
    keep_samples: bool,
    seed: int | None,
    journal: AnswerJournal | None,
) -> tuple[BenchmarkMetrics, list[dict[str, Any]] | None, str | None]:
    """One benchmark: the prompts the journal has not answered yet, ``batch_prompts`` per generate call (each
    batch journaled as soon as it is scored), then the metrics over all of them in prompt order."""
    count = len(bench.prompts)
    answered = {}
    if journal is not None:
        answered = {i: a for i in range(count) if (a := journal.answered(bench.name, i)) is not None}
    pending = [i for i in range(count) if i not in answered]
    for start in range(0, len(pending), batch_prompts):
        batch = _answer(engine, tokenizer, bench, pending[start : start + batch_prompts], params, scorer, seed,
                        keep_samples)  # fmt: skip
        answered.update(batch)
        if journal is not None:
            journal.record(bench.name, batch)
    metrics = benchmark_metrics([answered[i].outcomes for i in range(count)], pass_ks)
    records = [r for i in range(count) for r in answered[i].records] if keep_samples else None
    return metrics, records, answered[count - 1].version if count else None


def _answer(
    engine: RolloutEngine,
    tokenizer: Any,
    bench: Benchmark,
    indices: list[int],
    params: GenerationParams,
    scorer: ScorerPool | None,
    seed: int | None,
    keep_samples: bool,
) -> dict[int, AnsweredPrompt]:
    """k answers to each of ``bench``'s prompts ``indices``, scored: ``{prompt index: its answers}``."""
    chunk: list[PromptSample] = [bench.prompts[i] for i in indices]
    if seed is not None:
        params = replace(params, seeds=tuple(prompt_seed(seed, bench.name, i) for i in indices))
    samples: list[RolloutSample] = engine.generate([p.prompt_ids for p in chunk], params)
    if len(samples) != len(chunk) * params.n:
        raise RuntimeError(
            f"benchmark {bench.name!r}: engine returned {len(samples)} answers for {len(chunk)} prompts "
            f"x k={params.n}"
        )
    texts = tokenizer.batch_decode([s.response_ids for s in samples], skip_special_tokens=True)
    requests = []
    for s, text in zip(samples, texts, strict=True):
        p = chunk[s.prompt_index]
        # routed by data source whatever the pool's own scorer (a run's reward.scorer forces the training
        # rewards' only): the trainer's eval/* and hapo-eval score a benchmark alike
        requests.append(ScoreRequest(p.data_source, text, p.ground_truth, dict(p.extra_info), scorer=AUTO))
    scores = score_answers(requests, scorer)
    answers = {}
    for i, (index, prompt) in enumerate(zip(indices, chunk, strict=True)):
        outcomes, records = [], []
        for j in range(params.n):
            s, score, text = samples[i * params.n + j], scores[i * params.n + j], texts[i * params.n + j]
            if s.prompt_index != i or s.sample_index != j:
                raise RuntimeError(f"benchmark {bench.name!r}: engine returned answers out of order")
            outcomes.append(
                SampleOutcome(
                    acc=bool(score["acc"]),
                    length=len(s.response_ids),
                    finish_reason=s.finish_reason,
                    timed_out=bool(score["timed_out"]),
                    error=score["error"] is not None,
                )
            )
            records.append(
                {
                    "prompt": index,
                    "source": prompt.source,
                    "sample": j,
                    "data_source": prompt.data_source,
                    "ground_truth": prompt.ground_truth,
                    "response": text,
                    "pred": score["pred"],
                    "acc": bool(score["acc"]),
                    "score": float(score["score"]),
                    "length": len(s.response_ids),
                    "finish_reason": s.finish_reason,
                    "timed_out": bool(score["timed_out"]),
                    "error": score["error"],
                }
            )
        answers[index] = AnsweredPrompt(
            outcomes, records if keep_samples else None, samples[i * params.n].weight_version
        )
    return answers


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    benchmarks: Mapping[str, str | Path] | Sequence[str | Path] | Sequence[Benchmark],
    *,
    k: int = 8,
    temperature: float = 0.5,
    top_p: float = 0.7,
    top_k: int = -1,
    max_new_tokens: int = 10240,
    stop: Sequence[str] = (),
    scorer: ScorerPool | None = None,
    max_prompts: int | None = None,
    pass_ks: Sequence[int] = (),
    keep_samples: bool = False,
    batch_prompts: int = 256,
    max_prompt_length: int = 4096,
    truncation: Literal["drop", "left", "error"] = "error",
    apply_chat_template: bool = True,
    keys: RowKeys | None = None,
    model: str | None = None,
    step: int | None = None,
    seed: int | None = None,
    progress: Callable[[str], None] | None = None,
    journal: str | Path | None = None,
) -> EvalResult:
    """Evaluate ``engine`` on ``benchmarks`` with k samples per prompt; see the module docstring.

    benchmarks: ``{name: path}``, a list of paths (named by file stem), or already loaded
    :class:`Benchmark` objects (the trainer loads them once). Defaults are the paper's protocol:
    k=8 at T=0.5, top-p 0.7 (avg@8). scorer: a :class:`ScorerPool` (recommended), or None to score in
    this process. max_prompts: first N prompts of each benchmark only. pass_ks: extra pass@j to report
    (pass@1 and pass@k always are). keep_samples: keep every answer in ``EvalResult.samples``.
    batch_prompts: prompts per generate call. max_prompt_length / truncation / apply_chat_template /
    keys: how files are loaded (see :func:`~megatron_hapo.eval.benchmarks.load_benchmarks`).
    model / step: recorded in the result's settings. seed: draw answer j of prompt i with the sampling seed
    ``sample_seed(prompt_seed(seed, benchmark, i), j)``, so the result depends only on the logits and the
    seed (the engine must run the HAPO sampler, which serves seeds); None = unseeded. progress: called with
    the one-line summary of each benchmark as it completes (it is logged at INFO either way). journal: a file
    that keeps every batch's scored answers as they come (:mod:`megatron_hapo.eval.journal`): when it exists,
    the prompts it answered are not generated again (it must have been written by this evaluation: same model,
    settings and prompts); seeded, the result is then the uninterrupted evaluation's.
    """
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts must be >= 1, got {batch_prompts}")
    bad = [j for j in pass_ks if not 1 <= j <= k]
    if bad:
        raise ValueError(f"pass@j needs 1 <= j <= k={k}, got {bad}")
    params = GenerationParams(
        n=k,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=tuple(stop),
    )
    if benchmarks and all(isinstance(b, Benchmark) for b in benchmarks):
        loaded = [b if max_prompts is None else _first(b, max_prompts) for b in benchmarks]  # type: ignore[arg-type]
    else:
        loaded = load_benchmarks(
            benchmarks,  # type: ignore[arg-type]
            tokenizer,
            max_prompt_length=max_prompt_length,
            truncation=truncation,
            apply_chat_template=apply_chat_template,
            keys=keys,
            max_prompts=max_prompts,
        )
    answers = None
    if journal is not None:
        answers = open_journal(
            journal, loaded, k=k, temperature=temperature, top_p=top_p, top_k=top_k,
            max_new_tokens=max_new_tokens, stop=stop, model=model, seed=seed, keep_samples=keep_samples,
        )  # fmt: skip
        if len(answers):
            total = sum(len(b.prompts) for b in loaded)
            line = f"resuming: {len(answers)} of {total} prompts already answered ({answers.path})"
            logger.info("%s", line)
            if progress is not None:
                progress(line)
    t0 = time.monotonic()
    metrics: dict[str, BenchmarkMetrics] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    version = None
    for bench in loaded:
        tb = time.monotonic()
        m, records, version = _evaluate_one(
            engine, tokenizer, bench, params, scorer, batch_prompts, pass_ks, keep_samples, seed, answers
        )
        metrics[bench.name] = m
        if records is not None:
            samples[bench.name] = records
        line = (
            f"eval {bench.name}: {m.num_prompts} prompts, avg@{k} {100 * m.avg_at_k:.2f}%, "
            f"pass@{k} {100 * m.pass_at[k]:.2f}% ({time.monotonic() - tb:.1f}s)"
        )
        logger.info("%s", line)
        if progress is not None:
            progress(line)
    settings = EvalSettings(
        k, temperature, top_p, top_k, max_new_tokens, tuple(stop), model, version, step, seed=seed
    )
    return EvalResult(settings, metrics, time.monotonic() - t0, samples if keep_samples else None)


def open_journal(
    path: str | Path,
    benchmarks: Sequence[Benchmark],
    *,
    k: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    stop: Sequence[str],
    model: str | None,
    seed: int | None,
    keep_samples: bool,
) -> AnswerJournal:
    """The answer journal at ``path`` of :func:`evaluate` with these arguments: resumed when it exists, created
    otherwise. Raises :class:`~megatron_hapo.eval.journal.JournalMismatch` when it was written by another
    evaluation, so a caller can check a run directory before it starts an engine."""
    settings = EvalSettings(k, temperature, top_p, top_k, max_new_tokens, tuple(stop), model, seed=seed)
    return AnswerJournal(path, {**asdict(settings), "keep_samples": keep_samples}, benchmarks)


def _first(bench: Benchmark, n: int) -> Benchmark:
    return Benchmark(bench.name, bench.path, bench.prompts[:n], bench.stats)


__all__ = [
    "EvalResult",
    "EvalSettings",
    "comparison_table",
    "evaluate",
    "open_journal",
    "prompt_seed",
    "score_answers",
]
