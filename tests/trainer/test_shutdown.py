"""StopRequest in one process: the first signal only asks to stop, the second aborts, and an asyncio
SIGTERM handler (what an in-process SGLang engine registers) is taken over rather than run."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from megatron_hapo.trainer.shutdown import StopRequest, TrainingStopped


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
