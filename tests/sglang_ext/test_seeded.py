"""The CPU hash for seeded sampling equals SGLang's Triton kernel bit for bit (Triton's interpreter runs
it on CPU; it must be enabled before triton is imported, hence the subprocess)."""

import os
import subprocess
import sys

import torch

from sglang_ext.seeded import murmur_hash32_torch

_TRITON_REFERENCE = r"""
import torch, triton
from sglang.kernels.ops.sampling.murmur_hash import murmur_hash32_kernel
from sglang_ext.seeded import murmur_hash32_torch
seed = torch.tensor([0, 1, 42, 2**62 + 12345, 2**63 - 1, -5], dtype=torch.int64)
pos = torch.tensor([0, 7, 123456, 3, 2**31 - 1, 9], dtype=torch.int64)
cols = torch.arange(0, 3000, 7, dtype=torch.int64)
out = torch.empty((len(seed), len(cols)), dtype=torch.uint32)
murmur_hash32_kernel[(len(seed), triton.cdiv(len(cols), 1024))](seed, pos, cols, out, len(seed), len(cols), BLOCK_SIZE=1024)
ours = murmur_hash32_torch(seed, pos, cols)
assert ours.dtype == torch.uint32 and ours.shape == out.shape
diff = (ours.to(torch.int64) != out.to(torch.int64)).sum().item()
print("MISMATCHES", diff)
"""


def test_torch_hash_matches_sglang_triton_kernel():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _TRITON_REFERENCE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MISMATCHES 0" in proc.stdout, proc.stdout


def test_hash_spreads_over_seeds_positions_and_columns():
    h = murmur_hash32_torch(torch.tensor([1, 2]), torch.tensor([5, 5]), torch.arange(4096)).to(torch.int64)
    assert (h[0] != h[1]).float().mean() > 0.99  # another seed, other noise
    u = h.double() / (2**32 - 1)
    assert abs(u.mean().item() - 0.5) < 0.02 and u.min() >= 0 and u.max() <= 1  # ~uniform
    again = murmur_hash32_torch(torch.tensor([1]), torch.tensor([6]), torch.arange(4096)).to(torch.int64)
    assert (again[0] != h[0]).float().mean() > 0.99  # next position, other noise
