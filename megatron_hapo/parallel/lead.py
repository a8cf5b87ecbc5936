"""Waiting for the lead rank, on a group of its own.

Rank 0 works alone for long stretches: it starts the rollout engine, verifies the checkpoint it resumes from,
generates and scores each step's batch (several rounds with dynamic sampling), evaluates, and writes and prunes
checkpoints. The other ranks wait meanwhile. Waiting in a collective of the default group would bound that
work by the group's timeout (``trainer.collective_timeout_minutes``, Megatron's 10 minutes by default), which is
there to turn a hung compute collective into an error quickly; NCCL's watchdog then kills the job when a
rollout outlasts it, and a recipe-scale rollout (512 prompts x 16 responses of up to 10k tokens) can. So the
other ranks wait for the lead here instead: a gloo group whose timeout is ``trainer.lead_timeout_minutes``
(hours). The default group's collectives then only ever wait for compute. (Megatron-LM exposes the one timeout,
``--distributed-timeout-minutes``; RL trainers on Ray do not wait in collectives at all.)

In a world of one every function is a no-op.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_MINUTES = 720.0  # trainer.lead_timeout_minutes' default
POLL_S = 0.05  # how often a rank waiting for the lead returns to Python (where its signal handlers run)

_group: dist.ProcessGroup | None = None
_world: dist.ProcessGroup | None = None  # the default group _group was made in
_timeout = datetime.timedelta(minutes=DEFAULT_TIMEOUT_MINUTES)
# scatter_from_lead's groups: (every rank's replica, the replicas' first ranks, this rank's replica's ranks)
_replicas: tuple[tuple[int, ...], Any, Any] | None = None


def init_lead_group(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> None:
    """(Re)create the group with this timeout. Collective: every rank calls it at the same point. The
    functions below create it with the default timeout at their first use (they are collectives themselves)."""
    global _group, _world, _timeout
    destroy_lead_group()
    if dist.get_world_size() > 1:
        _timeout = datetime.timedelta(minutes=timeout_minutes)
        _group = dist.new_group(backend="gloo", timeout=_timeout)
        _world = dist.group.WORLD


def destroy_lead_group() -> None:
    global _group, _world, _replicas
    if _group is not None and _world is dist.group.WORLD:  # else they went with their default group
        dist.destroy_process_group(_group)
        _destroy_replica_groups()
    _group = _world = _replicas = None


def _current() -> dist.ProcessGroup | None:
    if dist.get_world_size() == 1:
        return None
    if _group is None or _world is not dist.group.WORLD:  # first use, or a new default group since
        init_lead_group()
    return _group


def wait_for_lead() -> None:
    """Every rank returns once all have called it: the others wait here while rank 0 finishes its own work."""
    group = _current()
    if group is not None:
        _wait(dist.barrier(group=group, async_op=True))


def broadcast_from_lead(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; the others' argument is ignored). The others wait for rank 0
    on the lead group; the object itself then moves through the default group, with NCCL's bandwidth on GPUs
    (a step's batch pickles to ~24 bytes per token, its per-token lists as arrays: hundreds of MB at recipe
    scale)."""
    group = _current()
    if group is None:
        return obj
    _wait(dist.barrier(group=group, async_op=True))
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def scatter_from_lead(shares: list[Any] | None, replica: int) -> Any:
    """``shares[r]`` on every rank of replica ``r`` (rank 0's ``shares``, one per replica; the others pass
    None): data that only some ranks need, such as each data-parallel rank's share of a step's routed experts
    (``replica``: this rank's data-parallel rank; its TP, PP and CP peers need the same share).

    Two hops on gloo groups, in CPU memory: rank 0 scatters the shares to the first rank of every replica, and
    each of those broadcasts its share to its replica. Rank 0 sends every share once and every rank receives
    only its own, where :func:`broadcast_from_lead` would give every rank all of them (through the GPU on NCCL).
    Collective: every rank calls it at the same point (the groups are made at the first call of a layout)."""
    group = _current()
    if group is None:
        return shares[replica]
    replica_of: list = [None] * dist.get_world_size()
    dist.all_gather_object(replica_of, replica, group=group)
    if sorted(set(replica_of)) != list(range(len(set(replica_of)))) or replica_of[0] != 0:
        raise ValueError(
            f"scatter_from_lead: replicas must be numbered 0..n-1 from rank 0's, got {replica_of}"
        )
    first, heads, mine = _replica_groups(tuple(replica_of))
    share = [None]
    if heads is not None:
        ordered = None
        if dist.get_rank() == 0:
            if shares is None or len(shares) != len(first):
                raise ValueError(f"scatter_from_lead: rank 0 needs one share per replica ({len(first)})")
            ordered = [shares[replica_of[g]] for g in sorted(first)]  # in the group's (ascending) rank order
        dist.scatter_object_list(share, ordered, src=0, group=heads)
    if mine is not None:
        dist.broadcast_object_list(share, src=first[replica], group=mine)
    return share[0]


def _replica_groups(replica_of: tuple[int, ...]) -> tuple[list[int], Any, Any]:
    """(each replica's first rank, the group of those ranks, this rank's replica's group); a group is None where
    this rank is not in it or it would hold one rank. Made once per layout, every rank making every group in the
    same order."""
    global _replicas
    rank, replicas = dist.get_rank(), sorted(set(replica_of))
    first = [replica_of.index(r) for r in replicas]
    if _replicas is None or _replicas[0] != replica_of:
        _destroy_replica_groups()
        heads = dist.new_group(first, backend="gloo", timeout=_timeout)
        mine = None
        for r in replicas:
            ranks = [g for g, x in enumerate(replica_of) if x == r]
            made = dist.new_group(ranks, backend="gloo", timeout=_timeout) if len(ranks) > 1 else None
            mine = made if replica_of[rank] == r else mine
        _replicas = (replica_of, heads if rank in first else None, mine)
    return first, _replicas[1], _replicas[2]


def _destroy_replica_groups() -> None:
    global _replicas
    for g in _replicas[1:] if _replicas else ():
        if g is not None:
            dist.destroy_process_group(g)
    _replicas = None


def max_over_ranks(value: int) -> int:
    """The largest of every rank's ``value`` (a flag any rank may raise)."""
    group = _current()
    if group is None:
        return value
    flag = torch.tensor([value], dtype=torch.int64)
    _wait(dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group, async_op=True))
    return int(flag.item())


def _wait(work: dist.Work) -> None:
    """Wait for a collective of the lead group in short sleeps. Python runs a signal handler only between
    bytecodes of the main thread: in one blocking ``wait`` a rank would sit in C++ for the whole of rank 0's
    rollout, and a SIGTERM to it would take effect (and be forwarded to rank 0, ``trainer/shutdown.py``)
    only once that rollout had finished."""
    pause = 0.001  # growing to POLL_S: a collective that completes at once costs no 50 ms
    while not work.is_completed():
        time.sleep(pause)
        pause = min(2 * pause, POLL_S)
    work.wait()  # raises the collective's error (the group's timeout)


def store_client(timeout_s: float = 60.0) -> dist.Store | None:
    """A connection of this process's own to the job's key-value store (the TCPStore that torchrun's agent,
    or rank 0 without torchrun, serves at ``MASTER_ADDR:MASTER_PORT``; every rank reached it at start-up).
    For a message that cannot wait for a collective: a stop signal that reached another rank while rank 0
    generates (``trainer/shutdown.py``). Its own connection, so a thread may use it while the default group's
    store serves the main thread. None in a world of one."""
    if dist.get_world_size() == 1 or "MASTER_ADDR" not in os.environ:
        return None
    return dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )  # fmt: skip
