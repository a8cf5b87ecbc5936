"""``hapo-eval``: avg@k / pass@k of an HF checkpoint on benchmark files, served by SGLang.

    hapo-eval --model HF_DIR [HF_DIR ...] --benchmarks aime24.parquet aime25.parquet [--names AIME24 AIME25]
              [--k 8] [--temperature 0.5] [--top-p 0.7] [--max-new-tokens 10240]
              [--out results.json] [--run-dir DIR] [--fleet-servers N] [--seeded [--seed S]] [--verbose]
              [--server-arg FIELD=VALUE ...]

Starts an in-process SGLang engine on the checkpoint (or, with ``--fleet-servers N``, N SGLang servers
behind a router), samples k answers per prompt, scores them in a process pool, prints the Markdown
table and writes the JSON result. Defaults follow the paper (avg@8 at T=0.5, top-p 0.7). Several ``--model``
(one architecture and tokenizer) are evaluated one after another on that engine, each loaded into it from
disk, and compared in a last table. Every batch of answers is kept in ``RUN_DIR/answers/`` as soon as it is scored:
the same command on the same ``--run-dir`` resumes an interrupted evaluation, generating only what is missing.
SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) stops it at once: the engine and the scorer are shut down, the
console says how many prompts are answered and the ``--run-dir`` that resumes them, and the exit code is 128 + the
signal number (143, 130).

The console is hapo-train's (``megatron_hapo.console``): a line naming the run directory, one line per
benchmark, the table and what needs acting on. The libraries' output (SGLang's settings and scheduler, Python
warnings) goes to ``RUN_DIR/logs/`` (``rank0.log``, ``sglang.log``; a fleet's servers: ``RUN_DIR/fleet_logs/``),
or to the console with ``--verbose``. The result goes to ``--out`` or ``RUN_DIR/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from megatron_hapo import console
from megatron_hapo.cli import report_errors
from megatron_hapo.data import DataError
from megatron_hapo.eval.benchmarks import benchmark_names
from megatron_hapo.eval.journal import JournalMismatch
from megatron_hapo.eval.runner import comparison_table, evaluate, open_journal
from megatron_hapo.rollout.types import GenerationParams
from megatron_hapo.stop_signals import STOP_SIGNALS

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hapo-eval", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        nargs="+",
        required=True,
        metavar="HF_DIR",
        help="HF checkpoint directory (weights + tokenizer); several of one architecture (a run's checkpoints) "
        "are evaluated one after another on one engine, each loaded into it from disk",
    )
    p.add_argument("--benchmarks", nargs="+", required=True, help="benchmark files (.parquet/.jsonl)")
    p.add_argument("--names", nargs="+", help="one name per benchmark file (default: file stems)")
    p.add_argument("--k", type=int, default=8, help="samples per prompt (avg@k, pass@k); paper: 8")
    p.add_argument("--pass-k", type=int, nargs="*", default=[], help="extra pass@j to report (j <= k)")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature; paper: 0.5")
    p.add_argument("--top-p", type=float, default=0.7, help="nucleus threshold; paper: 0.7")
    p.add_argument("--top-k", type=int, default=-1, help="top-k truncation; -1 = off")
    p.add_argument("--max-new-tokens", type=int, default=10240, help="response limit in tokens")
    p.add_argument("--stop", nargs="*", default=[], help="extra stop strings (EOS always stops)")
    p.add_argument("--max-prompts", type=int, default=None, help="first N prompts of each benchmark only")
    p.add_argument("--max-prompt-length", type=int, default=4096, help="prompt limit in tokens")
    p.add_argument(
        "--truncation", choices=("error", "left", "drop"), default="error",
        help="prompts over the limit: fail (default), keep their last tokens, or drop (counted)",
    )  # fmt: skip
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts without the chat template")
    p.add_argument("--default-data-source", default=None, help="data_source for files without that column")
    p.add_argument("--out", default=None, help="write the JSON result here (default: RUN_DIR/results.json)")
    p.add_argument(
        "--run-dir",
        default=None,
        help="logs, results and the answers so far (default: runs/hapo-eval-<date>-<time>); the same command on the "
        "run directory of an interrupted evaluation resumes it",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print SGLang's output and Python warnings (otherwise only in RUN_DIR/logs/); "
        "same as HAPO_VERBOSE=1",
    )
    p.add_argument("--save-samples", action="store_true", help="include every answer in the JSON")
    p.add_argument("--fleet-servers", type=int, default=0, help="N > 0: N SGLang servers + router")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of each engine/server")
    p.add_argument("--dtype", default="auto", help="SGLang dtype (auto, bfloat16, float32, ...)")
    p.add_argument("--seed", type=int, default=0, help="SGLang random seed; with --seeded, the answers' too")
    p.add_argument(
        "--seeded",
        action="store_true",
        help="seed every answer from --seed, its benchmark and its prompt's position (the HAPO sampler serves "
        "the seeds): the result then depends only on the model and the seed, so checkpoints are compared on "
        "the same draws",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="another SGLang ServerArgs field for the engine or servers (repeatable; VALUE read as YAML, e.g. "
        "ep_size=8, cuda_graph_bs_decode=[1,2,4]); checked against SGLang's fields before anything starts",
    )
    p.add_argument("--batch-prompts", type=int, default=256, help="prompts per generate call")
    p.add_argument("--scorer-workers", type=int, default=4, help="scoring processes; 0 = score in-process")
    p.add_argument("--score-timeout", type=float, default=5.0, help="scoring deadline per answer, seconds")
    p.add_argument("--reward-extra-modules", nargs="*", default=[], help="modules registering custom scorers")
    return p


# The SGLang fields hapo-eval sets from its own options (--server-arg may not).
OWNED_BY_EVAL = {
    "model_path": "--model", "tokenizer_path": "--model", "tp_size": "--tp", "dtype": "--dtype",
    "random_seed": "--seed", "sampling_backend": "--seeded (the HAPO sampler)", "host": "the fleet (loopback)",
    "port": "the fleet", "nccl_port": "the fleet", "base_gpu_id": "the fleet", "api_key": "the fleet",
    "device": "the machine",
}  # fmt: skip


def parse_server_args(pairs: list[str]) -> dict[str, Any]:
    """``--server-arg FIELD=VALUE`` options as ServerArgs values of SGLang's types; ValueError naming each bad one."""
    import yaml

    from megatron_hapo.rollout.serving import server_args_problems

    given = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(
                f"--server-arg {pair!r}: give FIELD=VALUE, e.g. --server-arg chunked_prefill_size=8192"
            )
        given[name.strip()] = yaml.safe_load(text)
    values, problems = server_args_problems(given, owned=OWNED_BY_EVAL)
    if problems:
        raise ValueError("; ".join(f"--server-arg {name} {problem}" for name, problem in problems.items()))
    return values


def build_engine(args: argparse.Namespace) -> Any:
    """The rollout engine the arguments ask for: in-process SGLang, or a fleet of servers."""
    if args.fleet_servers > 0:
        from megatron_hapo.rollout.fleet import FleetConfig, SGLangFleet

        cfg = FleetConfig(
            model_path=args.model[0],
            num_servers=args.fleet_servers,
            tp_size=args.tp,
            seed=args.seed,
            hapo_sampler=args.seeded,
            log_dir=str(args.run_dir / "fleet_logs"),
            server_args={**args.server_args, "dtype": args.dtype},
        )
        return SGLangFleet(cfg)
    from megatron_hapo.rollout import InProcessSGLangEngine

    return InProcessSGLangEngine(
        args.model[0],
        tp_size=args.tp,
        seed=args.seed,
        hapo_sampler=args.seeded,
        log_file=console.engine_log_file(args.run_dir),
        **{**args.server_args, "dtype": args.dtype},
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.set_verbose(args.verbose)
    try:  # bad arguments fail here, before any file is read or engine started
        _check_arguments(args)
        benchmarks = benchmark_names(
            dict(zip(args.names, args.benchmarks, strict=True)) if args.names else args.benchmarks
        )
        args.server_args = parse_server_args(args.server_arg)
    except (ValueError, DataError) as e:
        print(f"hapo-eval: {e}", file=sys.stderr)
        return 2
    from megatron_hapo.eval.preflight import model_problem, shared_engine_problem

    problems = [model_problem(m) for m in args.model] + [shared_engine_problem(args.model)]
    if problem := next((p for p in problems if p is not None), None):  # before the tokenizer reads a model
        print(f"hapo-eval: {problem}", file=sys.stderr)
        return 2
    args.run_dir = Path(args.run_dir or f"runs/hapo-eval-{time.strftime('%Y%m%d-%H%M%S')}")
    console.filter_benign_warnings()  # before SGLang is imported: most are import-time
    with console.logging_to(args.run_dir) as log_file, _stop_on_signals():
        where = "" if console.verbose() else f"; SGLang's output in {log_file.parent}/ (--verbose shows it)"
        print(f"hapo-eval: run directory {args.run_dir}{where}", flush=True)
        try:
            return report_errors("hapo-eval", lambda: _evaluate(args, benchmarks))
        except EvaluationStopped as stop:  # before any answer (no journal): nothing to resume
            _say(f"{stop}, before any answer")
            return stop.code


def _check_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first argument that cannot work (what SGLang, the scorer pool or the file
    system would otherwise refuse after the engine's start, or silently change)."""
    GenerationParams(
        n=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k,
    )  # fmt: skip
    bad = [j for j in args.pass_k if not 1 <= j <= args.k]
    if bad:
        raise ValueError(f"--pass-k values must be in [1, --k={args.k}], got {bad}")
    if args.names is not None:
        if len(args.names) != len(args.benchmarks):
            raise ValueError(
                f"--names gives {len(args.names)} names for {len(args.benchmarks)} benchmark files"
            )
        if twice := sorted({n for n in args.names if args.names.count(n) > 1}):
            raise ValueError(
                f"--names gives {', '.join(map(repr, twice))} to several benchmark files: one name each"
            )
    at_least = {
        "--batch-prompts": 1,
        "--max-prompts": 1,
        "--scorer-workers": 0,
        "--fleet-servers": 0,
        "--tp": 1,
    }
    for flag, low in at_least.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    if not args.score_timeout > 0:
        raise ValueError(f"--score-timeout must be a positive number of seconds, got {args.score_timeout}")
    from megatron_hapo.rewards import extra_module_problem

    for module in args.reward_extra_modules:
        if (problem := extra_module_problem(module)) is not None:
            raise ValueError(f"--reward-extra-modules: {problem}")
    if args.run_dir is not None and Path(args.run_dir).exists() and not Path(args.run_dir).is_dir():
        raise ValueError(f"--run-dir {args.run_dir} is a file: give a directory (new or an evaluation's)")
    if args.out is not None and Path(args.out).is_dir():
        raise ValueError(
            f"--out {args.out} is a directory: give the JSON file's path, e.g. {Path(args.out) / 'results.json'}"
        )


class EvaluationStopped(SystemExit):
    """SIGTERM or SIGINT stopped the evaluation; ``code`` is 128 + the signal number (143, 130). A SystemExit, as
    KeyboardInterrupt is: asyncio re-raises it out of SGLang's event loop, and ``except Exception`` keeps out."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped on {signal.Signals(self.signum).name} (exit code {self.code})"


@contextlib.contextmanager
def _stop_on_signals():
    """The first SIGTERM/SIGINT raises :class:`EvaluationStopped` wherever the main thread is (the answers of the
    batch in flight are lost; a journal line it cuts short is dropped on resume). The ``finally`` blocks then shut
    the engine and the scorer down; a signal meanwhile is logged, not raised, so that it cannot cut the shutdown
    short (the engine's processes ignore both signals: ``stop_signals.py``). The handlers in place before are
    restored after the block."""
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        if stopping:
            logger.warning("%s again: the evaluation is already stopping", signal.Signals(signum).name)
            return
        stopping = True
        raise EvaluationStopped(signum)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _say(message: str) -> None:
    """A line for the console's stderr, and for the log file."""
    logger.error("%s", message, extra=console.FILE_ONLY)
    print(f"hapo-eval: {message}", file=sys.stderr, flush=True)


def _evaluate(args: argparse.Namespace, benchmarks: dict[str, str]) -> int:
    from transformers import AutoTokenizer

    from megatron_hapo.data import RowKeys
    from megatron_hapo.eval.benchmarks import load_benchmarks
    from megatron_hapo.eval.preflight import budget_problem

    tokenizer = AutoTokenizer.from_pretrained(args.model[0])
    keys = RowKeys(default_data_source=args.default_data_source)
    # Load the files before starting anything heavy: a bad row fails in seconds, naming file and row.
    try:
        loaded = load_benchmarks(
            benchmarks,
            tokenizer,
            max_prompt_length=args.max_prompt_length,
            truncation=args.truncation,
            apply_chat_template=not args.no_chat_template,
            keys=keys,
            max_prompts=args.max_prompts,
        )
    except DataError as e:
        print(f"hapo-eval: {e}", file=sys.stderr)
        return 2
    if (problem := budget_problem(args.model[0], loaded, args.max_new_tokens)) is not None:
        print(f"hapo-eval: {problem}", file=sys.stderr)
        return 2
    sampling = dict(k=args.k, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens, stop=args.stop)  # fmt: skip
    seed = args.seed if args.seeded else None
    journals = [args.run_dir / "answers" / f"model{i}.jsonl" for i in range(len(args.model))]

    def open_journals() -> list:
        return [
            open_journal(journal, loaded, **sampling, model=model, seed=seed, keep_samples=args.save_samples)
            for model, journal in zip(args.model, journals, strict=True)
        ]

    try:  # a rerun on this run directory resumes: one written by another evaluation is refused now, not after
        open_journals()  # the engine's start or the evaluation of the models before it
    except JournalMismatch as e:
        print(f"hapo-eval: {e}", file=sys.stderr)
        return 2
    try:
        return _evaluate_models(args, tokenizer, loaded, sampling, seed, journals)
    except EvaluationStopped as stop:  # the engine and the scorer are shut down by now
        answered = [len(j) for j in open_journals()]
        if not any(answered):
            _say(f"{stop}, before any answer")
            return stop.code
        total = sum(len(b.prompts) for b in loaded)
        kept = ", ".join(f"{m} {n} of {total} prompts" for m, n in zip(args.model, answered, strict=True))
        _say(f"{stop}; answered and kept in {journals[0].parent}/: {kept}")
        _say(f"the same command with --run-dir {args.run_dir} resumes the evaluation")
        return stop.code


def _evaluate_models(
    args: argparse.Namespace,
    tokenizer,
    loaded: list,
    sampling: dict[str, Any],
    seed: int | None,
    journals: list[Path],
) -> int:
    """Every ``--model`` on one engine (each after the first loaded into it), answers journaled as they are
    scored, the results file written after each model."""
    import torch

    from megatron_hapo.rewards import ScorerPool
    from megatron_hapo.rollout.serving import report_server_args
    from megatron_hapo.sync import VERIFY_NAME, WeightSynchronizer

    console.start_resource_tracker(console.engine_log_file(args.run_dir))  # its exit notice: sglang.log
    scorer = None
    if args.scorer_workers > 0:
        scorer = ScorerPool(
            args.scorer_workers, call_timeout_s=args.score_timeout, extra_modules=args.reward_extra_modules
        )
    engine = None
    results = []
    out = Path(args.out or args.run_dir / "results.json")
    try:
        engine = build_engine(args)
        if args.server_args:
            report_server_args(args.server_args, engine, "--server-arg")
        # loads only (no transport); the read-back is exact at the engine's dtype when --dtype names it
        dtype = getattr(torch, args.dtype) if args.dtype in ("bfloat16", "float16", "float32") else None
        loader = WeightSynchronizer(engine, None, verify_name=VERIFY_NAME, engine_dtype=dtype)
        for i, model in enumerate(args.model):
            if i > 0:  # the same engine, this checkpoint's weights (read back and checked)
                loader.load(model, version=model)
            label = f"{model}: " if len(args.model) > 1 else ""
            result = evaluate(
                engine,
                tokenizer,
                loaded,
                **sampling,
                scorer=scorer,
                pass_ks=args.pass_k,
                keep_samples=args.save_samples,
                batch_prompts=args.batch_prompts,
                model=model,
                seed=seed,
                progress=None if console.verbose() else functools.partial(_print_progress, label),
                journal=journals[i],
            )
            print(f"{label}\n{result.table()}" if label else result.table(), flush=True)
            results.append(result)
            _write_results(results, out, several=len(args.model) > 1)  # a later failure keeps these
    finally:
        if engine is not None:
            engine.shutdown()
        if scorer is not None:
            scorer.close()
    if len(results) > 1:
        print(f"\n{comparison_table(results)}")
    print(f"wrote {out}")
    return 0


def _write_results(results: list, out: Path, several: bool) -> None:
    """One model: its result's JSON; several: the list of those done so far (replaced atomically)."""
    data = [r.to_dict() for r in results] if several else results[0].to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out)


def _print_progress(label: str, line: str) -> None:
    """A benchmark's line as it completes (verbose: its log line says the same)."""
    print(f"hapo-eval: {label}{line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
