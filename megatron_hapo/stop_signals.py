"""SIGINT and SIGTERM are the trainer's to handle (``trainer/shutdown.py``: finish the step, save, exit), not
its children's.

A Ctrl-C in a terminal goes to the whole foreground process group, torchrun forwards its SIGTERM to each
worker's process group (``os.killpg``), and Slurm signals a job step's tasks the same way. So the processes
the trainer starts get the signal too: an SGLang scheduler that died of it made SGLang kill the trainer
(SIGQUIT, then SIGKILL) before the step could finish, and a scorer worker that died of it failed the step's
scoring. The trainer starts them with both signals blocked (:func:`stop_signals_blocked`): the mask is
inherited across fork and exec, so an engine's processes never see them; scorer workers block them
themselves too (``rewards/pool.py``: a forkserver's child starts from the server's mask). The trainer stops
its children itself, by SIGKILL (their shutdown, ``ScorerPool.close`` also at exit, and
``PR_SET_PDEATHSIG`` when it dies).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread for the block; the processes started in it inherit the mask. A
    signal that arrives meanwhile is held, and delivered to this process when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
