"""Graceful shutdown of a training run on SIGTERM / SIGINT (a scheduler's preemption, Ctrl-C).

The first signal, whenever it comes (start-up, rollout, scoring, update, weight sync, checkpoint save, on any
rank), only sets a flag and wakes the :meth:`StopRequest.on_stop` threads. On rank 0 one of them cancels the
rollout in progress (``RolloutStage.cancel``: the engine aborts it and the data position rewinds; the step it
was for does not happen); a signal on another rank reaches rank 0 through the job's store
(:meth:`StopRequest.forward_to_lead`) and cancels it too. The loop finishes any other part of the step. At the
end of every step (and after every save, and once more at the end of the run) all ranks agree on the flag (a
max all-reduce on the lead group, so a signal that reached one rank stops every rank after the same step). The
loop then saves a checkpoint of the last completed step (unless it is saved already), shuts the engine (or
fleet) and the scorer down, and :func:`~megatron_hapo.trainer.loop.train` raises :class:`TrainingStopped`:
exit code 128 + signal number (143 for SIGTERM, 130 for SIGINT), so a job scheduler sees an interrupted run,
never a finished one. ``checkpoint.resume=auto`` (the default, and the CPU examples') continues from it.

A second signal aborts at once: the handler raises :class:`TrainingStopped` wherever the main thread
is (``finally`` blocks still shut the engine down). A save it interrupts is left as ``.tmp_step_<N>``,
never as a checkpoint: the last good one stays as it was (``trainer/checkpoint.py``).

An in-process SGLang engine would run its own SIGTERM path (drain, then ``sys.exit(0)``); the engine
wrapper removes it when the engine starts (``rollout/inprocess.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import threading
import warnings
from collections.abc import Callable

import torch.distributed as dist

from megatron_hapo.parallel.lead import max_over_ranks, store_client

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARD_POLL_S = 0.5  # how often rank 0 looks for a signal another rank forwarded
_forward_keys = itertools.count()  # one store key per run in this process (every rank counts alike)


class TrainingStopped(SystemExit):
    """The run stopped early on a signal; ``code`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int | None):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step

    def __str__(self) -> str:
        if self.step is None:
            where = "immediately (second signal)"
        else:
            where = f"after step {self.step}" if self.step else "before its first step (nothing to save)"
        return f"training stopped {where} on {signal.Signals(self.signum).name} (exit code {self.code})"


class StopRequest:
    """Catches SIGTERM/SIGINT in the main thread while installed; :meth:`agreed` is the collective check.

    Outside the main thread (a test calling ``train`` from a worker thread) nothing is installed and
    signals keep their previous behaviour.
    """

    def __init__(self) -> None:
        self.signum = 0  # the first signal received here; 0 = none
        self.forwarded = 0  # rank 0: the first signal another rank forwarded (forward_to_lead); 0 = none
        self.stopped: tuple[int, int] | None = None  # (signal, last step) once the ranks agreed to stop
        self._previous: dict[int, object] = {}
        # set by the first signal (or by uninstall: on_stop's threads end)
        self._requested = threading.Event()

    def install(self) -> StopRequest:
        """Take SIGTERM/SIGINT over (idempotent; :meth:`agreed` re-asserts it every step).

        A handler registered on the main thread's asyncio loop (``loop.add_signal_handler``) is removed
        first where the loop allows it (a plain asyncio loop does; a uvloop only while it runs, which is
        why the SGLang engine wrapper releases its own registration itself)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        loop = _main_event_loop()
        for s in STOP_SIGNALS:
            if loop is not None:
                loop.remove_signal_handler(s)
            previous = signal.signal(s, self._handle)
            self._previous.setdefault(s, previous)
        return self

    def uninstall(self) -> None:
        """Give the signals back to the handlers they had before :meth:`install`; end :meth:`on_stop`'s threads."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        self._requested.set()  # after the handlers went: a signal here cannot re-enter the event's lock

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` as soon as the first signal arrives (at once if it has), in a thread of its own
        (the handler only sets a flag; a callback may block). The rollout stage cancels the generation in
        progress with it, so that a stop does not wait for a rollout whose responses it would drop."""

        def watch():
            self._requested.wait()
            if self.signum or self.forwarded:  # else uninstall() woke it: no signal came
                try:
                    callback()
                except Exception:  # the stop goes on without it: the step then finishes as it would have
                    logger.exception("a stop callback failed")

        threading.Thread(target=watch, name="hapo-stop-watcher", daemon=True).start()

    def forward_to_lead(self) -> None:
        """In a run of several ranks, a signal on any rank also runs rank 0's :meth:`on_stop` callbacks (the
        rollout's cancel) within ``FORWARD_POLL_S``: the signalled rank writes it under a key of the job's
        store (``parallel/lead.py::store_client``), which a thread on rank 0 polls. Otherwise a signal that
        reached other ranks only (one node's preemption) would wait for rank 0's rollout: the ranks learn
        of it in :meth:`agreed`, after the step, and the other ranks sit in the lead group's wait until then.
        Every rank calls it once per run, after the process groups exist; a no-op in a world of one."""
        store = store_client()
        if store is None:
            return
        key, rank = f"hapo/stop/{next(_forward_keys)}", dist.get_rank()
        if rank != 0:
            self.on_stop(lambda: store.set(key, f"{rank} {self.signum}"))
            return

        def poll():
            try:
                while not self._requested.wait(FORWARD_POLL_S):
                    if store.check([key]):
                        sender, signum = map(int, store.get(key).split())
                        logger.warning(
                            "rank %d received %s: cancelling the rollout in progress here too",
                            sender, signal.Signals(signum).name,
                        )  # fmt: skip
                        self.forwarded = signum
                        self._requested.set()
            except Exception:  # the job's store is gone (the job is ending): the collective checks remain
                logger.exception("stopped polling for signals forwarded by other ranks")

        threading.Thread(target=poll, name="hapo-stop-forwarded", daemon=True).start()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum:
            logger.error("second signal (%s): aborting now, without a checkpoint", name)
            raise TrainingStopped(signum, None)
        self.signum = signum
        logger.warning(
            "received %s: cancelling the rollout in progress or finishing the update in progress, then "
            "checkpoint and exit (send it again to abort now)",
            name,
        )
        self._requested.set()  # the watcher runs the on_stop callbacks

    def agreed(self, step: int) -> bool:
        """Whether every rank stops after ``step``: collective (on the lead group), call once per step.

        The signal is taken from any rank that received one (max all-reduce), so all ranks agree."""
        if self._previous:
            self.install()  # an engine started during the step may have taken the signals over
        signum = self.signum
        if dist.is_initialized():  # on the lead group: the others wait here while rank 0 evaluates
            signum = max_over_ranks(signum)
        if signum:
            self.stopped = (signum, step)
            logger.warning("stopping after step %d on %s", step, signal.Signals(signum).name)
        return bool(signum)

    def raise_if_stopped(self) -> None:
        """After the run was shut down: raise :class:`TrainingStopped` when it stopped on a signal."""
        if self.stopped is not None:
            exc = TrainingStopped(*self.stopped)
            logger.error("%s; checkpoint.resume=auto continues from its checkpoint", exc)
            raise exc


def _main_event_loop() -> asyncio.AbstractEventLoop | None:
    """The main thread's asyncio loop (where SGLang's Engine runs its tokenizer manager), if open."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop()
        except RuntimeError:
            return None
    return None if loop.is_closed() else loop
