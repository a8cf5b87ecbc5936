"""The engine's requests in flight, and the gate a weight sync closes in front of them.

Every generate request of an engine runs inside :meth:`RequestGate.request`. A weight sync
(``sync/synchronizer.py``) calls :meth:`hold` (requests not yet started wait at the gate), then, by its
policy, waits for the running ones (:meth:`wait_idle`) or pauses/aborts them in the engine, updates the
weights, and :meth:`release` lets the waiting ones through: they are served by the new weights. Each
:meth:`hold` starts a new *epoch*; a request that started in an earlier epoch and came back aborted was
aborted by a sync and is resubmitted by its engine (no request is lost).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class RequestGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._running = 0
        self.epoch = 0  # incremented by every hold()

    @contextlib.contextmanager
    def request(self) -> Iterator[int]:
        """One request: waits while the gate is held, counts as in flight until it returns; yields the
        epoch it started in."""
        with self._cond:
            while self._held:
                self._cond.wait()
            self._running += 1
            epoch = self.epoch
        try:
            yield epoch
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def synced_since(self, epoch: int) -> bool:
        """True when a sync held the gate after a request of ``epoch`` started (its abort was the sync's)."""
        return self.epoch != epoch

    @property
    def in_flight(self) -> int:
        return self._running

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        with self._cond:
            if self._held:
                raise RuntimeError("the request gate is already held: one weight sync at a time")
            self._held = True
            self.epoch += 1

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> None:
        """Block until no request is in flight; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self._running} generate request(s) still in flight after {timeout_s:.0f} s of "
                        "waiting for them before a weight sync (rollout.sync_policy=wait; rollout.request_timeout_s)"
                    )
                self._cond.wait(left)
