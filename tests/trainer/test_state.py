"""TrainerState round trip, and trainer_state.json layouts: the one written before issue 18 (format 1) is
upgraded, a newer one is refused (not skipped) with the way forward."""

from __future__ import annotations

import json

import pytest

from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.trainer import manifest
from megatron_hapo.trainer.checkpoint import (
    STATE_FILE,
    STATE_FORMAT,
    CheckpointFormatUnknown,
    pack_lists,
    select,
    unpack_lists,
    upgrade_state,
    verify,
)
from megatron_hapo.trainer.state import TrainerState

STATS = EntropyStats(pivot=-0.5, sigma=0.7, pos_scale=1.25, neg_scale=0.5)


def test_trainer_state_round_trips_through_json():
    state = TrainerState(step=7, entropy_stats=STATS)
    loaded = TrainerState()
    loaded.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert loaded == state and loaded.entropy_stats.to_dict() == STATS.to_dict()
    fresh = TrainerState()
    fresh.load_state_dict(TrainerState(step=3).state_dict())
    assert fresh.step == 3 and fresh.entropy_stats is None
    with pytest.raises(ValueError, match=r"lacks \['entropy_stats'\]"):
        TrainerState().load_state_dict({"step": 1})


def test_format_1_state_is_upgraded_and_format_2_kept():
    order = {"epoch": 1, "position": 8, "seed": 3}
    legacy = {
        "data_order": order,
        "next_group": 40,
        "entropy_stats": STATS.to_dict(),
        "step": 5,
        "scheduler": {},
    }
    got = upgrade_state(legacy, "ckpt")
    assert got == {
        "format": STATE_FORMAT, "step": 5, "entropy_stats": STATS.to_dict(), "scheduler": {},
        "rollout": {"data_order": order, "next_group": 40},
    }  # fmt: skip
    assert upgrade_state(got, "ckpt") is got
    restored = TrainerState()
    restored.load_state_dict(got)
    assert restored.step == 5 and restored.entropy_stats.to_dict() == STATS.to_dict()


def test_a_newer_state_format_is_refused_not_skipped(tmp_path):
    for step, fmt in ((2, STATE_FORMAT), (4, STATE_FORMAT + 1)):
        d = tmp_path / f"step_{step}"
        d.mkdir()
        (d / STATE_FILE).write_text(json.dumps({"format": fmt, "step": step}))
        manifest.write(d, step)
    assert verify(tmp_path / "step_2") == 2
    # auto must not fall back to step_2: the save after it would discard the newer step_4
    with pytest.raises(
        CheckpointFormatUnknown,
        match=rf"step_4: trainer_state.json has format {STATE_FORMAT + 1}.*version that wrote it",
    ):
        select("auto", tmp_path)


def test_format_2_inline_ready_batch_reads_as_it_is():
    inline = {
        "format": 2,
        "step": 2,
        "rollout": {"next_group": 8, "ready_batch": {"samples": [], "accs": []}},
    }
    assert upgrade_state(inline, "ckpt") == dict(inline, format=STATE_FORMAT)


def test_ready_batch_packing_is_exact(tmp_path):
    """What ``ready_batch.pt`` holds: per-token lists as tensors, everything else as is, back bit for bit."""
    import torch

    batch = {
        "samples": [
            {"response_ids": [5, 7, 2**40], "logprobs": [-0.1, -1e-300, -2.5e-8], "entropies": None,
             "finish_reason": "stop", "extra": {}},
            {"response_ids": [], "logprobs": [], "entropies": [0.3], "finish_reason": "length", "extra": {}},
        ],
        "accs": [True, False],
        "scores": [1, -1.0],  # mixed: kept as a list
        "extra_metrics": {"reward/mean": 0.25},
    }  # fmt: skip
    packed = pack_lists(batch)
    assert packed["samples"][0]["response_ids"].dtype == torch.int64
    assert packed["samples"][0]["logprobs"].dtype == torch.float64
    torch.save(packed, tmp_path / "ready_batch.pt")
    back = unpack_lists(torch.load(tmp_path / "ready_batch.pt", weights_only=True))
    assert back == batch
    assert [type(x) for x in back["samples"][0]["logprobs"]] == [float] * 3
    assert [type(x) for x in back["scores"]] == [int, float]


def test_ready_batch_keeps_routed_experts(tmp_path):
    """A routing-replay batch generated ahead (rollout.max_staleness=1): each sample's ``routed_experts`` is a
    numpy array (rollout/parse.py), which ``torch.load(weights_only=True)`` refuses unless packed; it comes back
    with its dtype, shape and values."""
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    experts = [rng.integers(0, 64, (5, 8)).astype(np.uint8), rng.integers(0, 300, (3, 4)).astype(np.int16)]
    batch = {"samples": [{"response_ids": [1, 2], "routed_experts": e, "extra": {}} for e in experts]}
    torch.save(pack_lists(batch), tmp_path / "ready_batch.pt")
    back = unpack_lists(torch.load(tmp_path / "ready_batch.pt", weights_only=True))
    for sample, e in zip(back["samples"], experts, strict=True):
        got = sample["routed_experts"]
        assert isinstance(got, np.ndarray) and got.dtype == e.dtype and np.array_equal(got, e)
        assert sample["response_ids"] == [1, 2]
