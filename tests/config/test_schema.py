"""The schema: documented keys, the paper's defaults, the loss section matching HapoLossConfig, light imports."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from megatron_hapo.config import HapoLossConfig, RootConfig
from megatron_hapo.config.introspect import iter_keys
from megatron_hapo.config.loader import compose

REQUIRED = ["model.hf_path=m", "data.train_files=[t.jsonl]"]


def test_every_key_has_a_one_line_help():
    for k in iter_keys():
        assert k.help and "\n" not in k.help, f"{k.path} lacks a one-line help"


def test_sections_are_the_issue_components():
    assert [f.name for f in dataclasses.fields(RootConfig)] == [
        "model", "parallel", "precision", "optim", "rollout", "sampling", "algorithm",
        "reward", "data", "trainer", "checkpoint", "logging", "eval", "cluster",
    ]  # fmt: skip


def test_defaults_are_the_hapo_recipe_values():
    """docs/hapo_spec.md §9 (common to all recipes) and §10 (validation sampling)."""
    cfg = compose(None, REQUIRED).cfg
    loss = cfg.algorithm.loss
    assert (loss.clip_low, loss.clip_high, loss.dual_clip_c) == (0.2, 0.2, 10.0)
    assert (loss.adaptive_clip, loss.clip_alpha, loss.adaptive_advantage, loss.adv_beta) == (
        True,
        1.0,
        True,
        1.0,
    )
    assert (loss.pivot_quantile, loss.agg) == (0.8, "token-mean")
    assert cfg.algorithm.adv_estimator == "tlga" and cfg.algorithm.norm_adv_by_std
    assert cfg.algorithm.adaptive_temperature.tau == 0.05
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.clip_grad) == (
        1e-6,
        0.1,
        (0.9, 0.999),
        1.0,
    )
    assert (cfg.optim.warmup_steps, cfg.optim.schedule) == (10, "constant")
    assert (cfg.data.train_batch_size, cfg.data.mini_batch_size, cfg.data.max_prompt_length) == (
        512,
        32,
        1024,
    )
    t, v = cfg.sampling.train, cfg.sampling.val
    assert (t.temperature, t.top_p, t.top_k, t.n) == (1.0, 1.0, -1, 16)
    assert (v.temperature, v.top_p, v.top_k, v.n) == (0.5, 0.7, -1, 8)
    assert (cfg.reward.overlong.buffer_len, cfg.reward.overlong.penalty_factor) == (4096, 1.0)
    assert cfg.eval.every == 5


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "algorithm.loss.dual_clip_c=null",
            "algorithm.loss.tis_cap=2.0",
            "algorithm.loss.agg=seq-mean-token-sum-norm",
        ],
        ["algorithm.loss.entropy_mode=released", "algorithm.loss.stats_scope=micro_batch"],
        [
            "algorithm.loss.adaptive_clip=false",
            "algorithm.loss.clip_high=0.28",
            "algorithm.loss.clip_low=0.0",
        ],
    ],
)
def test_a_loss_section_that_validates_builds_a_hapo_loss_config(overrides):
    from megatron_hapo.config import collect_issues

    cfg = compose(None, [*REQUIRED, *overrides]).cfg
    assert collect_issues(cfg, check_env=False) == []
    assert isinstance(cfg.algorithm.loss, HapoLossConfig)  # the section is the loss's own settings
    cfg.algorithm.loss.check()  # must not raise


@pytest.mark.parametrize(
    "bad", ["algorithm.loss.clip_low=0.6", "algorithm.loss.dual_clip_c=0.5", "algorithm.loss.tis_cap=0"]
)
def test_a_loss_section_the_loss_rejects_is_rejected_at_load_time(bad):
    from megatron_hapo.config import collect_issues

    cfg = compose(None, [*REQUIRED, bad]).cfg
    assert collect_issues(cfg, check_env=False)
    with pytest.raises(ValueError):
        cfg.algorithm.loss.check()


def test_importing_config_stays_light():
    code = (
        "import sys, megatron_hapo.config as c; c.help_config(); "
        "heavy = [m for m in ('torch', 'megatron', 'sglang', 'transformers', 'math_verify') if m in sys.modules]; "
        "sys.exit(str(heavy) if heavy else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
