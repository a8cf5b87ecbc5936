"""Seeded sampling on CPU: the hash behind SGLang's per-request ``sampling_seed``, in plain torch.

SGLang samples a seeded row by Gumbel-max, ``argmax_v(log p_v + g_v)`` with ``g_v = -log(-log u_v)`` and
``u_v = murmur3(seed, position, v) / (2^32 - 1)`` (``sglang.srt.layers.sampler.multinomial_with_seed``):
the token depends only on the seed, the position and the distribution. On CUDA the hash is a Triton
kernel; on CPU SGLang calls ``sgl_kernel``'s CPU op, which the CPU-only install does not have. This
module gives the same MurmurHash3 blend (four 32-bit blocks: seed low, seed high, position, column;
finalised with length 16) as the Triton kernel in ``sglang/kernels/ops/sampling/murmur_hash.py``, in
int64 arithmetic masked to 32 bits, and an AROUND hook that uses it for CPU tensors when
``sgl_kernel`` is missing.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

HOOK_TARGET = "sglang.srt.layers.sampler.murmur_hash32"  # the name multinomial_with_seed looks up
_MASK = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # x < 2^32 and c < 2^32: the int64 product wraps, but its low 32 bits are exact
    return (x * c) & _MASK


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _mix(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = _mul32(_rotl32(_mul32(k, 0xCC9E2D51), 15), 0x1B873593)
    h = _rotl32(h ^ k, 13)
    return (h * 5 + 0xE6546B64) & _MASK


def _fmix(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def murmur_hash32_torch(
    seed: torch.Tensor, positions: torch.Tensor, col_indices: torch.Tensor
) -> torch.Tensor:
    """[n] seeds (int64), [n] positions, [m] column indices -> [n, m] uint32 hashes."""
    seed = seed.to(torch.int64).view(-1, 1)
    low, high = seed & _MASK, (seed >> 32) & _MASK  # arithmetic shift, masked: the bit pattern of uint64
    pos = positions.to(torch.int64).view(-1, 1) & _MASK
    col = col_indices.to(torch.int64).view(1, -1) & _MASK
    h = torch.zeros_like(low)
    for block in (low, high, pos):
        h = _mix(h, block)
    h = _fmix(_mix(h, col) ^ 16)
    return h.to(torch.uint32)


@functools.cache
def _sgl_kernel_available() -> bool:  # asked once per process, not per decode step
    return importlib.util.find_spec("sgl_kernel") is not None


def murmur_hash32_hook(original, seed, positions, col_indices):
    """AROUND hook on SGLang's ``murmur_hash32``: the torch hash for CPU tensors without ``sgl_kernel``."""
    if seed.device.type == "cpu" and not _sgl_kernel_available():
        return murmur_hash32_torch(seed, positions, col_indices)
    return original(seed, positions, col_indices)
