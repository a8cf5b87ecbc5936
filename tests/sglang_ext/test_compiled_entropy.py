"""The sampler's entropy as it runs on a GPU server: compiled by torch.compile (``fused_token_entropy``).

The rest of the suite runs the eager definition (tests/conftest.py: ``HAPO_ENTROPY_KERNEL=eager``, and
TORCHDYNAMO_DISABLE=1), which equals ``token_entropy`` bit for bit; CPU servers run the native kernel
(test_native_entropy.py). This test enables dynamo and ``HAPO_ENTROPY_KERNEL=compile`` in a subprocess, so
that inductor compiles the graph a GPU server compiles (C++ here, Triton there), and checks that the fused
kernel computes the same entropies, to float rounding, on everything the sampler meets:
masked (−inf) entries, a fully masked row, bf16 logits, several batch and vocabulary sizes (one dynamic
compilation), and a HAPO sampler call whose reported H and T_eff follow from it."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.torchrun_utils import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from megatron_hapo.algorithms import entropy_kernel, fused_token_entropy, token_entropy
    from tests.sglang_ext.sampler_utils import adaptive_call_against_definition

    worst = 0.0
    for b, v, dtype in [(4, 64, torch.float32), (33, 1000, torch.float32), (8, 5000, torch.bfloat16)]:
        z = (torch.randn(b, v, generator=torch.Generator().manual_seed(b)) * 4).to(dtype)
        z[:, : v // 3] = float("-inf")  # masked tokens (grammar, min-tokens EOS ban)
        z[1] = float("-inf")  # nothing left: H = 0
        fused, eager = fused_token_entropy(z), token_entropy(z)
        assert fused[1].item() == 0.0 and fused.dtype == torch.float32
        worst = max(worst, ((fused - eager).abs() / eager.clamp_min(1e-3)).max().item())

    call = adaptive_call_against_definition()
    print(json.dumps(dict(kernel=entropy_kernel(), worst=worst, h=call["h_rel"], t=call["t"])))
    """
)


@pytest.mark.timeout(300)
def test_compiled_entropy_matches_the_eager_definition():
    env = dict(
        os.environ,
        TORCHDYNAMO_DISABLE="0",
        HAPO_ENTROPY_KERNEL="compile",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=280
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kernel"] == "torch.compile"
    assert result["worst"] < 1e-5  # relative, per row
    assert result["h"] < 1e-5 and result["t"] < 1e-6


def test_the_suite_runs_the_entropy_eagerly():
    """What the other sampler tests rely on for their bit-exact comparisons with token_entropy."""
    from megatron_hapo.algorithms import entropy_kernel

    assert entropy_kernel().startswith("eager")
