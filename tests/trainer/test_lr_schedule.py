"""The LR schedule across a resume (trainer/optim.py): the checkpoint gives the progress, this run's config the
schedule; a setting that changed is named in a warning."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from megatron_hapo.config import load_config
from megatron_hapo.trainer.optim import build_scheduler, load_scheduler_state

CONFIG = "examples/configs/tiny_cpu.yaml"


def _scheduler(cfg, optimizer_steps: int):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    return build_scheduler(cfg, optimizer, optimizer_steps), optimizer


def _lrs(scheduler, optimizer, n: int) -> list[float]:
    out = []
    for _ in range(n):
        scheduler.step(1)
        out.append(optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("resumed_steps", [10, 20])
def test_a_resume_keeps_its_progress_and_follows_this_runs_schedule(resumed_steps, caplog):
    """A cosine run planned for 10 updates stops after 5 and resumes, as planned or lengthened to 20: the rest of
    its LRs are those of an uninterrupted run of that length (Megatron's default kept the checkpoint's 10 decay
    steps, so the lengthened run trained at min_lr = 0 from update 11 on)."""
    cfg = load_config(CONFIG, ["optim.schedule=cosine", "optim.lr=1e-3", "optim.warmup_steps=2"],
                      world_size=1, check_env=False)  # fmt: skip
    first, first_opt = _scheduler(cfg, 10)
    _lrs(first, first_opt, 5)
    saved = json.loads(json.dumps(first.state_dict()))  # as trainer_state.json keeps it
    resumed, resumed_opt = _scheduler(cfg, resumed_steps)
    with caplog.at_level(logging.WARNING, logger="megatron_hapo.trainer.optim"):
        load_scheduler_state(resumed, saved)
    uninterrupted, opt = _scheduler(cfg, resumed_steps)
    expected = _lrs(uninterrupted, opt, resumed_steps)[5:]
    assert _lrs(resumed, resumed_opt, resumed_steps - 5) == pytest.approx(expected, rel=1e-12, abs=0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "megatron_hapo.trainer.optim"]
    if resumed_steps == 10:
        assert warnings == []
    else:
        assert expected[5] > 0  # update 11, at min_lr = 0 on the checkpoint's schedule
        (message,) = warnings
        assert "from optimizer step 5 on: lr_decay_steps 10 -> 20 (optim.decay_steps" in message


def test_every_changed_setting_is_named(caplog):
    before = load_config(CONFIG, ["optim.lr=1e-3", "optim.weight_decay=0.1"], world_size=1, check_env=False)
    after = load_config(CONFIG, ["optim.lr=5e-4", "optim.schedule=linear"], world_size=1, check_env=False)
    first, _ = _scheduler(before, 10)
    resumed, _ = _scheduler(after, 10)
    with caplog.at_level(logging.WARNING, logger="megatron_hapo.trainer.optim"):
        load_scheduler_state(resumed, first.state_dict())
    (message,) = [r.getMessage() for r in caplog.records if r.name == "megatron_hapo.trainer.optim"]
    for change in ("max_lr 0.001 -> 0.0005 (optim.lr)", "lr_decay_style constant -> linear (optim.schedule)",
                   "start_wd 0.1 -> 0.0 (optim.weight_decay)"):  # fmt: skip
        assert change in message, message
