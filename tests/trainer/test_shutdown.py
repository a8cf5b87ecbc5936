"""StopRequest in one process: the first signal only asks to stop, the second aborts, and an asyncio
SIGTERM handler (what an in-process SGLang engine registers) is taken over rather than run."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

from megatron_hapo.trainer.shutdown import StopRequest, TrainingStopped
from tests.torchrun_utils import run_torchrun


def test_first_signal_stops_after_the_step_second_aborts():
    before = signal.getsignal(
        signal.SIGTERM
    )  # not always SIG_DFL: an earlier in-process engine may leave one
    stop = StopRequest().install()
    try:
        assert not stop.agreed(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs in the main thread, at the latest when the sleep is interrupted
        assert stop.signum == signal.SIGTERM
        assert stop.agreed(2) and stop.stopped == (signal.SIGTERM, 2)
        with pytest.raises(TrainingStopped) as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert second.value.code == 128 + signal.SIGINT
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(TrainingStopped) as raised:
        stop.raise_if_stopped()
    assert raised.value.code == 143 and "after step 2 on SIGTERM" in str(raised.value)


def test_an_asyncio_sigterm_handler_is_taken_over():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    called = []
    loop.add_signal_handler(signal.SIGTERM, called.append, "sglang")
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        loop.run_until_complete(asyncio.sleep(0.05))  # a handler still registered would run now
        assert stop.signum == signal.SIGTERM and called == []
    finally:
        stop.uninstall()
        loop.close()
        asyncio.set_event_loop(None)


def test_nothing_to_raise_without_a_signal():
    stop = StopRequest().install()
    stop.uninstall()
    assert not stop.agreed(3)
    stop.raise_if_stopped()


def test_on_stop_callbacks_run_in_threads_of_their_own_at_the_first_signal():
    """The rollout stage cancels its engine this way: the handler only sets a flag; a callback may block (a
    fleet's abort is HTTP) while the main thread goes on."""
    ran: list[tuple[str, str]] = []
    both = threading.Barrier(3)

    def callback(name):
        def call():
            ran.append((name, threading.current_thread().name))
            both.wait(5)  # blocks until the other callback and the main thread got here

        return call

    stop = StopRequest().install()
    try:
        stop.on_stop(callback("a"))
        stop.on_stop(callback("b"))
        time.sleep(0.2)
        assert ran == []  # nothing before a signal
        os.kill(os.getpid(), signal.SIGTERM)
        both.wait(5)
        assert sorted(ran) == [("a", "hapo-stop-watcher"), ("b", "hapo-stop-watcher")]
        late = threading.Event()
        stop.on_stop(late.set)  # registered after the signal: runs at once
        assert late.wait(5)
    finally:
        stop.uninstall()
    assert stop.agreed(1)


def test_uninstall_ends_the_watchers_without_calling_back():
    called = []
    stop = StopRequest().install()
    stop.on_stop(lambda: called.append(1))
    watchers = [t for t in threading.enumerate() if t.name == "hapo-stop-watcher"]
    stop.uninstall()
    for t in watchers:
        t.join(5)
    assert not any(t.is_alive() for t in watchers) and called == []


def test_a_signal_on_another_rank_reaches_rank_0s_callbacks_through_the_store():
    """torchrun, 2 ranks: SIGTERM to rank 1 only runs rank 0's on_stop callback (the rollout's cancel) while
    rank 0 is in no collective; a later run without a signal forwards nothing (tests/dist_jobs)."""
    out = run_torchrun("job_stop_forwarding.py", 2, timeout=300)
    assert "job_stop_forwarding: all checks passed" in out, out[-3000:]
