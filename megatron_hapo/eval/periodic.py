"""Evaluation inside training: every ``eval.every`` steps (and before the first when
``eval.before_train``), with ``sampling.val`` (k = ``sampling.val.n``), against the trainer's own
rollout engine right after a weight sync.

    evaluator = Evaluator.from_config(cfg, tokenizer, scorer=pool)   # files loaded and tokenized once
    ...
    if evaluator.due(step):
        result = evaluator.run(engine, step)                          # EvalResult
        log(result.metrics())                                         # eval/<bench>/avg@8, ...
    evaluator.history.best_table()                                    # per-benchmark maxima (paper table)

The paper's table reports, per benchmark, the maximum avg@8 over the validation curve (so the cells can
come from different checkpoints; HAPO_SPEC §10). :class:`EvalHistory` keeps every result and reports
those maxima *with the step of each*, so that the choice is visible rather than hidden.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_hapo.data import RowKeys
from megatron_hapo.eval.benchmarks import Benchmark, load_benchmarks
from megatron_hapo.eval.journal import JournalMismatch
from megatron_hapo.eval.runner import EvalResult, evaluate

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from megatron_hapo.config.schema import RootConfig
    from megatron_hapo.rewards import ScorerPool
    from megatron_hapo.rollout.types import RolloutEngine


@dataclass
class EvalHistory:
    """Every evaluation of a run, by step; the per-benchmark maxima the paper's table reports.

    path: when set, each result is appended there as one JSON line ``{"step", "result"}`` as it is added
    (a run's ``eval_history.jsonl``: a crash keeps every evaluation before it)."""

    results: list[tuple[int, EvalResult]] = field(default_factory=list)
    path: Path | None = None

    @classmethod
    def continued(cls, path: str | Path) -> EvalHistory:
        """The history written to ``path`` so far (none when it does not exist), appended to from now on."""
        path = Path(path)
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        records = [json.loads(line) for line in lines if line.strip()]
        return cls([(int(r["step"]), EvalResult.from_dict(r["result"])) for r in records], path)

    def add(self, step: int, result: EvalResult) -> None:
        self.results.append((step, result))
        if self.path is not None:
            record = {"step": step, "result": result.to_dict()}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def best(self) -> dict[str, tuple[float, int]]:
        """``{benchmark: (max avg@k, step of the first maximum)}`` over the recorded evaluations."""
        best: dict[str, tuple[float, int]] = {}
        for step, result in self.results:
            for name, m in result.benchmarks.items():
                if name not in best or m.avg_at_k > best[name][0]:
                    best[name] = (m.avg_at_k, step)
        return best

    def best_table(self) -> str:
        """Markdown: per-benchmark maximum avg@k and its step, and the mean of the maxima ("Avg")."""
        best = self.best()
        if not best:
            return "(no evaluations recorded)"
        rows = ["| benchmark | max avg@k | step |", "| --- | --- | --- |"]
        rows += [f"| {name} | {100 * v:.2f} | {step} |" for name, (v, step) in best.items()]
        mean = sum(v for v, _ in best.values()) / len(best)
        rows.append(f"| **Avg of maxima** | {100 * mean:.2f} | |")
        return "\n".join(rows)


class Evaluator:
    """Periodic evaluation for the trainer: benchmarks loaded once, run on a schedule, history kept.

    benchmarks: loaded :class:`Benchmark` objects. every: evaluate when ``step % every == 0`` (0 =
    never); before_train: also at step 0. The keyword arguments go to :func:`evaluate`.
    """

    def __init__(
        self,
        benchmarks: list[Benchmark],
        tokenizer: Any,
        *,
        every: int,
        before_train: bool = True,
        scorer: ScorerPool | None = None,
        **eval_kwargs: Any,
    ):
        if every < 0:
            raise ValueError(f"eval.every must be >= 0, got {every}")
        self.benchmarks = benchmarks
        self.tokenizer = tokenizer
        self.every = every
        self.before_train = before_train
        self.scorer = scorer
        self.eval_kwargs = eval_kwargs
        self.history = EvalHistory()
        self.journal_dir: Path | None = None

    @classmethod
    def from_config(
        cls, cfg: RootConfig, tokenizer: Any, scorer: ScorerPool | None = None
    ) -> Evaluator | None:
        """The evaluator a run's config describes (``eval.*``, ``sampling.val``, ``data.*`` keys), or
        None when ``eval.benchmarks`` is empty."""
        ev, data, val = cfg.eval, cfg.data, cfg.sampling.val
        if not ev.benchmarks:
            return None
        keys = RowKeys(
            prompt=data.prompt_key,
            data_source=data.data_source_key,
            ground_truth=data.ground_truth_key,
            extra_info=data.extra_info_key,
            default_data_source=data.default_data_source,
        )
        benchmarks = load_benchmarks(
            ev.benchmarks,
            tokenizer,
            max_prompt_length=data.max_prompt_length,
            truncation=data.truncation,
            apply_chat_template=data.apply_chat_template,
            keys=keys,
            max_prompts=ev.max_prompts,
        )
        return cls(
            benchmarks,
            tokenizer,
            every=ev.every,
            before_train=ev.before_train,
            scorer=scorer,
            k=val.n,
            temperature=val.temperature,
            top_p=val.top_p,
            top_k=val.top_k,
            max_new_tokens=ev.max_new_tokens or cfg.rollout.max_new_tokens,
            stop=tuple(cfg.rollout.stop),
            model=initial_weights(cfg),
            # seeded like the rollouts: a resumed run repeats the evaluations too, and every evaluation of the
            # run draws the same way for the same prompt (checkpoints compared on common random numbers)
            seed=cfg.trainer.seed if cfg.rollout.seeded_sampling else None,
        )

    def record_to(self, path: str | Path, journal_dir: str | Path | None = None) -> None:
        """Continue the history written to ``path`` (a resumed run's ``eval_history.jsonl``, already cut back to
        its checkpoint's step) and append every later evaluation to it. ``journal_dir``: each evaluation keeps its
        scored answers in ``<journal_dir>/step_<N>.jsonl`` as they come (:mod:`megatron_hapo.eval.journal`), so
        that one a stop or a crash interrupted continues where it stopped (:meth:`pending`); journals of steps
        after the resume's are the caller's to remove (:func:`drop_journals_after`)."""
        self.history = EvalHistory.continued(path)
        self.journal_dir = None if journal_dir is None else Path(journal_dir)

    def due(self, step: int, *, last: bool = False) -> bool:
        """Whether to evaluate after ``step`` (step 0 = before training); ``last``: the run's last step, which
        is evaluated whatever ``every`` (as it is saved: the weights the run ends with), unless ``every`` is 0."""
        if step == 0:
            return self.before_train
        return self.every > 0 and (step % self.every == 0 or last)

    def pending(self, step: int, *, last: bool = False) -> bool:
        """Due after ``step`` and not in the history: at a resume from step N's checkpoint, the evaluation of
        step N that a stop cancelled or a failure ended (the engine serves step N's weights again)."""
        return self.due(step, last=last) and all(s != step for s, _ in self.history.results)

    def run(self, engine: RolloutEngine, step: int) -> EvalResult:
        """Evaluate now (whatever the schedule) and record the result under ``step``."""
        journal = None if self.journal_dir is None else self.journal_dir / f"step_{step}.jsonl"
        try:
            result = self._evaluate(engine, step, journal)
        except JournalMismatch as e:  # written under other eval settings: its answers are of no use now
            logger.warning(
                "step %d's evaluation starts over: its answer journal is of other settings (%s)", step, e
            )
            journal.unlink()
            result = self._evaluate(engine, step, journal)
        self.history.add(step, result)
        return result

    def _evaluate(self, engine: RolloutEngine, step: int, journal: Path | None) -> EvalResult:
        return evaluate(
            engine, self.tokenizer, self.benchmarks, scorer=self.scorer, step=step, journal=journal,
            **self.eval_kwargs,
        )  # fmt: skip


def initial_weights(cfg: RootConfig) -> str:
    """What the run starts from, as its evaluations record it (``EvalSettings.model``): ``model.hf_path``, and
    what else makes the weights before training: random ones of ``trainer.seed``, ``model.override_config``.
    The journal of the evaluation before training holds it in its settings, so a fresh start of the run
    continues that journal only for the same weights (:func:`drop_journals_after`)."""
    m = cfg.model
    label = m.hf_path if m.load_weights else f"{m.hf_path} (random weights, seed {cfg.trainer.seed})"
    if m.override_config:
        label += f" override_config={json.dumps(dict(m.override_config), sort_keys=True, default=str)}"
    return label


def drop_journals_after(journal_dir: str | Path, resume_step: int) -> list[Path]:
    """Remove the answer journals that a run resuming after ``resume_step`` (0: a fresh start) must not
    continue: those of later steps, the interrupted attempt's weights, which a resumed run does not repeat
    exactly on GPUs. Step 0's stays on a fresh start: the weights before training are the run's
    :func:`initial_weights`, which its settings record (a journal of other weights starts over, saying so), so
    an attempt that ended in its first steps (an out-of-memory update, a preemption before the first checkpoint)
    does not generate that evaluation again. Returns the removed files."""
    steps = {p: p.stem.removeprefix("step_") for p in sorted(Path(journal_dir).glob("step_*.jsonl"))}
    dropped = [p for p, n in steps.items() if n.isdigit() and int(n) > resume_step]
    for p in dropped:
        p.unlink()
    return dropped
