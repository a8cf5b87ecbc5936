"""The sampler's entropy on CPU servers: the native row kernel (``megatron_hapo/ops/cpu_entropy.c``).

The rest of the suite runs the eager definition (``HAPO_ENTROPY_KERNEL=eager`` in tests/conftest.py, for
its bit-exact comparisons); these tests switch it back to ``auto``, the default everywhere else, and check
the kernel against ``token_entropy`` on everything the sampler meets: masked (−inf) entries, fully masked
rows, the rows token_entropy maps to NaN or 0, bf16 and non-contiguous logits, vocabularies across the
kernel's summation blocks, rows split over threads, and a HAPO sampler call whose reported H and T_eff
follow from it. The kernel is CPU-only: other devices never select it."""

import os
import subprocess
import sys

import pytest
import torch

from megatron_hapo.algorithms import (
    entropy_kernel,
    fused_token_entropy,
    token_entropy,
)
from megatron_hapo.ops.cpu_entropy import cpu_row_entropy, native_entropy_status
from tests.sglang_ext.sampler_utils import adaptive_call_against_definition
from tests.torchrun_utils import REPO_ROOT


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv("HAPO_ENTROPY_KERNEL", "auto")
    assert native_entropy_status() is None, native_entropy_status()  # the CI machine has gcc
    assert entropy_kernel("cpu").startswith("native")


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs() / want.abs().clamp_min(1e-3)).max().item()


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((4, 64), torch.float32),
        ((33, 1000), torch.float32),
        ((8, 5000), torch.bfloat16),
        ((3, 9000), torch.float32),
    ],
)
def test_native_kernel_matches_the_definition(native, shape, dtype):
    """9000 spans three of the kernel's 4096-entry summation blocks, the last one partial."""
    b, v = shape
    z = (torch.randn(b, v, generator=torch.Generator().manual_seed(v)) * 4).to(dtype)
    z[:, : v // 3] = float("-inf")  # masked tokens (grammar, min-tokens EOS ban)
    z[1] = float("-inf")  # nothing left: H = 0
    got = fused_token_entropy(z)
    want = token_entropy(z)
    assert got.dtype == torch.float32 and got.shape == (b,)
    assert got[1].item() == 0.0
    assert _relative(got, want) < 1e-5


def test_native_kernel_edge_rows_and_layouts(native):
    z = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    z[0, 3] = float("inf")  # token_entropy: NaN
    z[1, 4] = float("nan")  # token_entropy: 0
    z[2] = float("-inf")  # nothing left: 0
    z[3] = 5.0  # uniform: log 50
    z[4, :49] = float("-inf")  # one outcome left: 0
    got, want = cpu_row_entropy(z), token_entropy(z)
    assert torch.isnan(got[0]) and torch.isnan(want[0])
    assert got[1:3].tolist() == want[1:3].tolist() == [0.0, 0.0]
    assert got[3].item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=1e-6)
    assert got[4].item() == 0.0
    assert _relative(got[5:], want[5:]) < 1e-5
    assert cpu_row_entropy(torch.tensor([[1e4, 0.0, 0.0]])).item() == 0.0
    # [..., V] of any layout: batch dimensions kept, a transposed (non-contiguous) view read correctly
    z3 = torch.randn(2, 3, 70, generator=torch.Generator().manual_seed(2))
    assert cpu_row_entropy(z3).shape == (2, 3)
    assert _relative(cpu_row_entropy(z3), token_entropy(z3)) < 1e-5
    zt = torch.randn(70, 5, generator=torch.Generator().manual_seed(3)).t()
    assert _relative(cpu_row_entropy(zt), token_entropy(zt)) < 1e-5


def test_rows_split_over_threads_give_the_single_thread_result(native):
    """Each thread takes a contiguous share of the rows; a wrong offset would shift or drop rows."""
    z = torch.randn(67, 3001, generator=torch.Generator().manual_seed(4)) * 3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = cpu_row_entropy(z)
        torch.set_num_threads(3)  # 67 rows -> shares of 22, 22 and 23
        split = cpu_row_entropy(z)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, split)
    assert _relative(split, token_entropy(z)) < 1e-5


def test_hapo_sampler_on_the_native_kernel(native):
    call = adaptive_call_against_definition()
    assert call["h_rel"] < 1e-5 and call["t"] < 1e-6
    assert call["moved"] > 0.01  # the schedule did move the temperatures


def test_the_kernel_is_cpu_only():
    """GPU logits never reach it: other devices get torch.compile (Triton) or the eager definition, and a
    direct call with logits elsewhere is refused instead of reading device memory as host memory."""
    assert not entropy_kernel("cuda").startswith("native")
    assert not entropy_kernel("cuda:1").startswith("native")
    with pytest.raises(ValueError, match="on meta"):
        cpu_row_entropy(torch.empty(2, 8, device="meta"))
    with pytest.raises(ValueError, match="vocab > 0"):
        cpu_row_entropy(torch.empty(2, 0))


def test_a_bad_kernel_choice_names_the_variable(monkeypatch):
    monkeypatch.setenv("HAPO_ENTROPY_KERNEL", "fast")
    with pytest.raises(ValueError, match="HAPO_ENTROPY_KERNEL='fast'.*auto"):
        fused_token_entropy(torch.zeros(1, 4))


@pytest.mark.timeout(120)
def test_without_a_compiler_the_sampler_says_so_and_stays_exact():
    """CC names a compiler that does not exist: the kernel reports why, the start-up line says eager, and
    the entropy is still the definition's."""
    script = (
        "import torch\n"
        "from megatron_hapo.algorithms import entropy_kernel, fused_token_entropy, token_entropy\n"
        "z = torch.randn(3, 40)\n"
        "assert torch.equal(fused_token_entropy(z), token_entropy(z))\n"
        "print(entropy_kernel('cpu'))\n"
    )
    env = dict(os.environ, HAPO_ENTROPY_KERNEL="auto", CC="/nonexistent/cc", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=110
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("eager (native CPU kernel unavailable: /nonexistent/cc could not build"), line
