"""Entropy/temperature step metrics over every data-parallel rank: two gloo ranks, each holding its own
slice (one of them without any valid token), must report the statistics of the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_hapo.trainer.metrics import token_metrics


def _batch():
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(6, 5, generator=g)
    temps = 0.8 + 0.4 * torch.rand(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.4
    mask[4:] = False  # rank 1 (rows 4-5) has no valid token: its min/max must not count
    return entropy, temps, mask


def _rank(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        entropy, temps, mask = _batch()
        lo, hi = (0, 4) if rank == 0 else (4, 6)  # rank 1 has no valid token at all
        out[rank] = token_metrics(entropy[lo:hi], temps[lo:hi], mask[lo:hi], group=dist.group.WORLD)
    finally:
        dist.destroy_process_group()


def test_token_metrics_are_global_over_ranks():
    entropy, temps, mask = _batch()
    whole = token_metrics(entropy, temps, mask)
    assert whole["entropy/mean"] == pytest.approx(float(entropy[mask].mean()))
    assert whole["temperature/min"] == pytest.approx(float(temps[mask].min()))
    assert whole["temperature/max"] == pytest.approx(float(temps[mask].max()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(port, out), nprocs=2, join=True)
        per_rank = [dict(out[0]), dict(out[1])]
    for got in per_rank:
        assert got == pytest.approx(whole)


def test_token_metrics_without_tokens_are_zero():
    z = torch.zeros(2, 3)
    assert token_metrics(z, z + 1.0, z.bool()) == {
        "entropy/mean": 0.0,
        "temperature/mean": 0.0,
        "temperature/min": 0.0,
        "temperature/max": 0.0,
    }
