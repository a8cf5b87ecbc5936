"""Scores batches of answers in worker processes, with a deadline per answer that nothing can outlast.

Why processes: math-verify's timeouts use SIGALRM, which only works in a process's main thread, and
some inputs keep C code busy past any signal. So:

* each worker scores one answer at a time; the parent hands a worker a new answer only when it is
  idle, so the deadline is measured from the **start of the work**, never from queue entry (queue time
  would turn slow batches into false zeros);
* inside the worker the scorer gets a :class:`Deadline` (``call_timeout_s``) and stops cooperatively:
  each math-verify step runs under a SIGALRM timeout that ends by the deadline;
* the parent kills a worker that has not answered ``kill_grace_s`` after the deadline (C code ignoring
  signals, a scorer that never checks its deadline), records that answer as timed out and starts a
  replacement, so one adversarial answer can never hang training;
* workers start with ``spawn`` by default (safe when the trainer holds CUDA/NCCL state), import
  math-verify once, cache parsed golds, and quieten math-verify's logger.

Timeouts and errors are counted apart from wrong answers (``BatchScores.num_timeouts``/``num_errors``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from megatron_hapo.rewards.registry import AUTO, get_scorer, resolve_scorer
from megatron_hapo.rewards.types import Deadline, Score, ScoreRequest, make_score
from megatron_hapo.stop_signals import STOP_SIGNALS, stop_signals_blocked

if TYPE_CHECKING:
    from megatron_hapo.config.schema import RewardConfig

logger = logging.getLogger(__name__)

_SCORE_KEYS = ("score", "acc", "pred", "timed_out", "error")


# ------------------------------------------------------------------------------------------- worker


def _coerce(result: Any, fail_score: float) -> Score:
    """Validate a scorer's return value; a malformed one becomes an error result (never a silent 0)."""
    if not isinstance(result, dict) or not {"score", "acc"} <= result.keys():
        return make_score(
            fail_score, False, None, error=f"scorer returned {type(result).__name__}, not a Score dict"
        )
    out = dict(result)
    out.setdefault("pred", None)
    out.setdefault("timed_out", False)
    out.setdefault("error", None)
    out["score"], out["acc"] = float(out["score"]), bool(out["acc"])
    return out  # type: ignore[return-value]


def run_scorer(
    name: str, response: str, ground_truth: str, extra: dict[str, Any], deadline: Deadline
) -> Score:
    """Run registered scorer ``name`` on one answer; exceptions become error results."""
    entry = get_scorer(name)
    try:
        result = entry.fn(response, ground_truth, deadline=deadline, extra=extra)
    except Exception as e:
        return make_score(entry.fail_score, False, None, error=f"{type(e).__name__}: {e}"[:500])
    return _coerce(result, entry.fail_score)


def _warm_up() -> None:
    """The first LaTeX parse builds math-verify's parser (~20x a normal call): do it before "ready", so
    that it never eats into an answer's deadline."""
    from megatron_hapo.rewards.mathverify import verify_answer

    verify_answer("\\boxed{\\frac{1}{2}}", "so $x = 0.5$", Deadline(60.0, 30))


def _worker_main(conn: Connection, verify_timeout_s: int, extra_modules: tuple[str, ...]) -> None:
    """Worker process: import once, then score one (task_id, scorer, response, gt, extra, budget) at a time."""
    # A Ctrl-C, torchrun's or Slurm's SIGTERM reaches us too, and is the parent's to handle: blocked for good
    # (megatron_hapo/stop_signals.py; the parent blocked them while starting us, and a forkserver's child
    # starts from the server's mask). The parent stops us by SIGKILL: close(), at its exit too (atexit).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        from megatron_hapo.rewards.mathverify import quiet_math_verify
        from megatron_hapo.rewards.registry import registered

        quiet_math_verify()
        importlib.import_module("math_verify")  # sympy: ~1 s, paid once here rather than on the first answer
        for module in extra_modules:
            importlib.import_module(module)
        registered()
        _warm_up()
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task_id, name, response, ground_truth, extra, budget_s = msg
        deadline = Deadline(budget_s, verify_timeout_s)  # starts now: the work starts now
        conn.send((task_id, run_scorer(name, response, ground_truth, extra, deadline)))


# ------------------------------------------------------------------------------------------- parent


@dataclass
class BatchScores:
    """Scores of one batch, in request order, and what went wrong.

    num_timeouts: answers that ran out of time (counted apart from wrong answers).
    num_errors: answers whose scorer raised or whose worker crashed.
    num_workers_replaced: workers killed (deadline) or found dead and restarted during this batch.
    wall_s: wall time of the batch, seconds.
    """

    results: list[Score]
    num_timeouts: int
    num_errors: int
    num_workers_replaced: int
    wall_s: float

    @property
    def scores(self) -> list[float]:
        return [r["score"] for r in self.results]

    @property
    def accs(self) -> list[bool]:
        return [r["acc"] for r in self.results]

    def metrics(self, prefix: str = "reward/") -> dict[str, float]:
        n = max(len(self.results), 1)
        return {
            f"{prefix}timeouts": float(self.num_timeouts),
            f"{prefix}errors": float(self.num_errors),
            f"{prefix}workers_replaced": float(self.num_workers_replaced),
            f"{prefix}acc_mean": sum(self.accs) / n,
            f"{prefix}score_mean": sum(self.scores) / n,
            f"{prefix}scoring_s": self.wall_s,
        }


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, ctx: Any, verify_timeout_s: int, extra_modules: tuple[str, ...]):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, verify_timeout_s, extra_modules),
            daemon=True,
            name="hapo-scorer",
        )
        with stop_signals_blocked():  # the worker starts with them blocked (_worker_main)
            self.proc.start()
        child.close()  # the parent keeps its end only, so a dead worker reads as EOF
        self.state = "starting"  # starting -> idle <-> busy
        self.task: int | None = None
        self.since = time.monotonic()

    def send_task(self, task_id: int, payload: tuple) -> None:
        self.conn.send((task_id, *payload))
        self.state, self.task, self.since = "busy", task_id, time.monotonic()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()

    def stop(self, timeout: float = 2.0) -> None:
        try:
            if self.state == "idle":
                self.conn.send(None)
                self.proc.join(timeout=timeout)
        except (OSError, BrokenPipeError):
            pass
        self.kill()


class ScorerPool:
    """A pool of scoring processes. Use as a context manager, or call ``close()``.

    num_workers: worker processes. scorer: ``auto`` (route by data_source, see ``registry``) or a name.
    call_timeout_s: deadline per answer from the start of its work. verify_timeout_s: math-verify's own
    per-step timeout (whole seconds). kill_grace_s: extra time before a worker still busy is killed.
    start_method: spawn | forkserver | fork. extra_modules: modules workers (and this process) import to
    register custom scorers. startup_timeout_s: a worker not ready by then is an error.
    """

    def __init__(
        self,
        num_workers: int = 2,
        *,
        scorer: str = AUTO,
        call_timeout_s: float = 5.0,
        verify_timeout_s: int = 1,
        kill_grace_s: float = 2.0,
        start_method: str = "spawn",
        extra_modules: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
    ):
        if num_workers < 1:
            raise ValueError(f"ScorerPool needs num_workers >= 1 (reward.num_workers), got {num_workers}")
        if call_timeout_s <= 0 or verify_timeout_s < 1:
            raise ValueError(
                f"need call_timeout_s > 0 and verify_timeout_s >= 1, got {call_timeout_s}, {verify_timeout_s}"
            )
        self.extra_modules = tuple(extra_modules)
        for module in self.extra_modules:  # fail here, not in every worker, if a module is missing
            importlib.import_module(module)
        if scorer != AUTO:
            get_scorer(scorer)
        self.scorer = scorer
        self.call_timeout_s = float(call_timeout_s)
        self.verify_timeout_s = int(verify_timeout_s)
        self.kill_grace_s = float(kill_grace_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._ctx = mp.get_context(start_method)
        self._closed = False
        self._workers: list[_Worker] = []
        # before multiprocessing's own exit handler, which would SIGTERM (blocked: _worker_main) and join them
        atexit.register(_close_at_exit, weakref.ref(self))
        for _ in range(num_workers):  # start now: workers import math-verify while the caller does other work
            self._workers.append(self._spawn())

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> ScorerPool:
        """A pool configured by the ``reward`` config section."""
        return cls(
            cfg.num_workers,
            scorer=cfg.scorer,
            call_timeout_s=cfg.call_timeout_s,
            verify_timeout_s=cfg.verify_timeout_s,
            kill_grace_s=cfg.kill_grace_s,
            start_method=cfg.start_method,
            extra_modules=cfg.extra_modules,
        )

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.verify_timeout_s, self.extra_modules)

    # -------------------------------------------------------------------------------------- scoring

    def score(self, requests: Sequence[ScoreRequest]) -> BatchScores:
        """Score ``requests``; results come back in request order. Never hangs: see the module docstring."""
        if self._closed:
            raise RuntimeError("ScorerPool is closed")
        t0 = time.monotonic()
        entries = [resolve_scorer(r.data_source, r.scorer or self.scorer) for r in requests]
        results: list[Score | None] = [None] * len(requests)
        pending = deque(range(len(requests)))
        replaced = 0
        kill_after = self.call_timeout_s + self.kill_grace_s

        while pending or any(w.state == "busy" for w in self._workers):
            for idx, w in enumerate(self._workers):
                if w.state == "idle" and pending:
                    i = pending.popleft()
                    r = requests[i]
                    payload = (
                        entries[i].name,
                        r.response,
                        str(r.ground_truth),
                        dict(r.extra),
                        self.call_timeout_s,
                    )
                    try:
                        w.send_task(i, payload)
                    except OSError:  # it died while idle (e.g. the OOM killer): requeue, replace
                        pending.appendleft(i)
                        w.kill()
                        self._workers[idx] = self._spawn()
                        replaced += 1
            active = [w for w in self._workers if w.state in ("busy", "starting")]
            if not active:
                continue
            now = time.monotonic()
            limits = [w.since + (kill_after if w.state == "busy" else self.startup_timeout_s) for w in active]
            by_conn = {w.conn: w for w in active}
            for conn in wait(list(by_conn), timeout=max(0.0, min(limits) - now)):
                w = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    replaced += self._on_dead(w, results, entries)
                    continue
                if w.state == "starting":
                    self._on_started(w, msg)
                else:
                    task_id, result = msg
                    results[task_id] = result
                    w.state, w.task = "idle", None
            now = time.monotonic()
            for idx, w in enumerate(self._workers):
                if w.state == "busy" and now - w.since > kill_after:
                    assert w.task is not None
                    fail = entries[w.task].fail_score
                    results[w.task] = make_score(fail, False, None, timed_out=True)
                    logger.warning(
                        "reward worker pid %s exceeded the %.1fs scoring deadline (+%.1fs grace); killed and replaced",
                        w.proc.pid, self.call_timeout_s, self.kill_grace_s,
                    )  # fmt: skip
                    w.kill()
                    self._workers[idx] = self._spawn()
                    replaced += 1
                elif w.state == "starting" and now - w.since > self.startup_timeout_s:
                    self.close()
                    raise RuntimeError(
                        f"a reward worker did not start within {self.startup_timeout_s:.0f}s "
                        f"(start_method={self._ctx.get_start_method()}); the machine may be overloaded"
                    )

        final: list[Score] = [r for r in results if r is not None]
        assert len(final) == len(requests)
        return BatchScores(
            results=final,
            num_timeouts=sum(r["timed_out"] for r in final),
            num_errors=sum(r["error"] is not None for r in final),
            num_workers_replaced=replaced,
            wall_s=time.monotonic() - t0,
        )

    def _on_started(self, w: _Worker, msg: tuple) -> None:
        kind, payload = msg
        if kind == "failed":
            self.close()
            raise RuntimeError(
                f"a reward worker failed to start (reward.extra_modules={list(self.extra_modules)}):\n{payload}"
            )
        w.state, w.since = "idle", time.monotonic()

    def _on_dead(self, w: _Worker, results: list[Score | None], entries: list) -> int:
        """A worker's pipe closed: record its answer as an error and replace it. Returns 1 (replaced)."""
        w.proc.join(timeout=5)  # reap it, so that its exit code is known
        if w.state == "starting":
            code = w.proc.exitcode
            self.close()
            raise RuntimeError(f"a reward worker died while starting (exit code {code})")
        if w.state == "busy" and w.task is not None:
            results[w.task] = make_score(
                entries[w.task].fail_score,
                False,
                None,
                error=f"scoring worker died (exit code {w.proc.exitcode})",
            )
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()
        return 1

    # ------------------------------------------------------------------------------------- lifecycle

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker has started (optional: ``score`` waits by itself)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.startup_timeout_s)
        while any(w.state == "starting" for w in self._workers):
            starting = {w.conn: w for w in self._workers if w.state == "starting"}
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"reward workers not ready after {timeout}s")
            for conn in wait(list(starting), timeout=left):
                try:
                    self._on_started(starting[conn], conn.recv())
                except (EOFError, OSError):
                    self.close()
                    raise RuntimeError("a reward worker died while starting") from None

    @property
    def worker_pids(self) -> list[int | None]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for w in self._workers:
            w.stop()

    def __enter__(self) -> ScorerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down multiprocessing
            self.close()


def _close_at_exit(pool_ref: weakref.ref) -> None:
    pool = pool_ref()
    if pool is not None:
        pool.close()
