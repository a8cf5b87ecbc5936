"""Probes of the machine that config validation needs (Transformer Engine, GPU, CUDA).

Kept behind a small dataclass so validation stays testable without a GPU: tests pass fake probes.
Heavy imports (torch, transformer_engine) happen only when a probe is called, i.e. only when the
config asks for FP8 or the TE layer spec.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass


@functools.cache
def transformer_engine_error() -> str | None:
    """None if Transformer Engine's PyTorch API imports, else why not.

    Catches ``Exception``, not just ImportError: a half-installed TE raises RuntimeError or
    AttributeError at import (notes/dependencies.md §1.2).
    """
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def gpu_capability() -> tuple[int, int] | None:
    """Compute capability of the current CUDA device, or None when no CUDA device is visible."""
    try:
        import torch
    except Exception:
        return None
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability())  # type: ignore[return-value]


def cuda_version() -> tuple[int, int] | None:
    """CUDA version torch was built with, or None for a CPU build."""
    try:
        import torch
    except Exception:
        return None
    if not torch.version.cuda:
        return None
    major, minor = torch.version.cuda.split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class EnvProbe:
    """What validation asks about the machine. The defaults probe the real one."""

    te_error: Callable[[], str | None] = transformer_engine_error
    gpu_capability: Callable[[], tuple[int, int] | None] = gpu_capability
    cuda_version: Callable[[], tuple[int, int] | None] = cuda_version
