"""A stop signal on rank 1 only reaches rank 0's on_stop callbacks (what cancels its rollout) through the job's
store, within a second, while no collective runs (run under torchrun, gloo, 2 ranks).

1. Rank 1 is signalled while it waits for rank 0 in the lead group (as during a rollout); rank 0, busy
   outside any collective, sees its callback run (forwarded, not its own signal), and both ranks then
   agree to stop. The wait must let rank 1's handler run: Python runs it only between bytecodes.
2. A second run in the same processes, without a signal: its key is another one, so nothing is forwarded,
   no callback runs, and uninstall ends the polling thread.

Every rank exits 1 if any check failed on any rank (counted with one all-reduce at the end).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch.distributed as dist

from megatron_hapo.parallel import init_distributed
from megatron_hapo.parallel.lead import init_lead_group, max_over_ranks, wait_for_lead
from megatron_hapo.trainer.shutdown import FORWARD_POLL_S, StopRequest

FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILURES.append(what)


def signal_on_rank_1(rank: int) -> None:
    stop = StopRequest().install()
    stop.forward_to_lead()
    called = threading.Event()
    stop.on_stop(called.set)
    dist.barrier()
    sent = time.monotonic() + 0.5
    if rank == 1:  # the signal comes while the main thread waits for the lead
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
        wait_for_lead()
        check(stop.signum == signal.SIGTERM, f"rank 1's own signal: {stop.signum}")
    else:  # rank 0 is in no collective here (it generates): only the store can tell it
        check(called.wait(10), "rank 0's on_stop callback did not run within 10 s of rank 1's signal")
        took = time.monotonic() - sent
        print(f"rank 0 learnt of rank 1's signal after {took:.2f} s")
        check(took < 4 * FORWARD_POLL_S + 1, f"forwarding took {took:.2f} s")
        check(stop.signum == 0 and stop.forwarded == signal.SIGTERM, (stop.signum, stop.forwarded))
        wait_for_lead()
    check(stop.agreed(1) and stop.stopped == (signal.SIGTERM, 1), f"rank {rank}: {stop.stopped}")
    stop.uninstall()


def no_signal(rank: int) -> None:
    stop = StopRequest().install()
    stop.forward_to_lead()
    called = threading.Event()
    stop.on_stop(called.set)
    time.sleep(3 * FORWARD_POLL_S)  # rank 0 polls a few times: the first run's key must not count
    dist.barrier()
    pollers = [t for t in threading.enumerate() if t.name == "hapo-stop-forwarded"]
    check(len(pollers) == (1 if rank == 0 else 0), f"rank {rank}: polling threads {pollers}")
    stop.uninstall()
    for t in pollers:
        t.join(5)
    check(not any(t.is_alive() for t in pollers), "uninstall did not end the polling thread")
    check(
        not called.is_set() and stop.forwarded == 0 and not stop.agreed(1),
        f"rank {rank}: a stop without a signal",
    )


def main() -> int:
    env = init_distributed()
    init_lead_group()  # as train() does (created lazily, its creation would block outside Python)
    signal_on_rank_1(env.rank)
    no_signal(env.rank)
    failed = max_over_ranks(len(FAILURES))
    for f in FAILURES:
        print(f"rank {env.rank}: FAILED {f}", file=sys.stderr)
    if env.rank == 0 and not failed:
        print("job_stop_forwarding: all checks passed")
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
