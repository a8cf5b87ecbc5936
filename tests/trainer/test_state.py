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
    select,
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
        CheckpointFormatUnknown, match=r"step_4: trainer_state.json has format 3.*version that wrote it"
    ):
        select("auto", tmp_path)
