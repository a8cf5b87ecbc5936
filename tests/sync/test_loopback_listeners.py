"""Security default (docs/security.md): the trainer process's own torch.distributed world of one listens on
no interface but loopback (torch's TCPStore behind a ``tcp://127.0.0.1`` init listens on every interface,
so the world of one uses an in-process store)."""

from __future__ import annotations

import os

import psutil
import torch
import torch.distributed as dist

import megatron_hapo.parallel as hp


def _listening() -> set[str]:
    conns = psutil.Process(os.getpid()).net_connections(kind="inet")
    return {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}


def test_world_of_one_listens_on_loopback_only():
    assert not dist.is_initialized()
    hp.init_distributed(backend="gloo")
    t = torch.ones(3)
    dist.all_reduce(t)  # a working world
    assert t.tolist() == [1.0, 1.0, 1.0]
    assert _listening() <= {"127.0.0.1", "::1"}, _listening()
