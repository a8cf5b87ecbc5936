"""HF <-> Megatron conversion at TP=2 and PP=2 (one torchrun launch at world 2, ~10 s of start-up).

The checks are in tests/dist_jobs/job_models_world2.py; this test builds the tiny HF models and
launches it. Run with `-s` to see the measured logit differences.
"""

import pytest

from tests.models.tiny import FAMILIES, make_family_model
from tests.torchrun_utils import run_torchrun


@pytest.mark.dist
def test_tp2_pp2_logits_exports_and_resharding_all_families(tmp_path):
    for family in FAMILIES:
        make_family_model(tmp_path / family, family)
    out = run_torchrun("job_models_world2.py", 2, str(tmp_path), *FAMILIES, timeout=600)
    print("\n".join(line for line in out.splitlines() if line.startswith("[job]")))
    assert "[job] OK" in out, out[-3000:]


@pytest.mark.dist
def test_expert_parallelism_with_tp_and_with_pp_world_4(tmp_path):
    hf = make_family_model(tmp_path / "moe", "qwen3_moe")
    out = run_torchrun("job_expert_layouts.py", 4, str(hf), timeout=600)
    print("\n".join(line for line in out.splitlines() if line.startswith("[job]")))
    assert "[job] OK" in out, out[-3000:]
