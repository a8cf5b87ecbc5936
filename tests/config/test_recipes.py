"""The paper's recipes: they validate at their declared cluster size and the memory arithmetic fits."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from megatron_hapo.config import load_config
from megatron_hapo.config.plan import model_arch, param_counts, render_plan

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "configs" / "recipes"
MODELS = {  # published parameter counts, billions
    "qwen2.5_math_1.5b": 1.54, "qwen2.5_math_7b": 7.62, "qwen3_8b": 8.19,
    "qwen3_14b": 14.77, "llama3.1_8b_instruct": 8.03, "llama3.2_3b_instruct": 3.21,
}  # fmt: skip


def load(name, *overrides):
    return load_config(RECIPES / f"{name}.yaml", list(overrides), check_env=False)


@pytest.mark.parametrize("model", MODELS)
def test_hapo_recipe_fits_its_cluster_and_counts_the_right_model(model):
    cfg = load(f"{model}_hapo")
    world = cfg.cluster.nodes * cfg.cluster.gpus_per_node
    report = render_plan(cfg, world)  # raises when the estimate exceeds 80 GiB
    assert f"training   {world} GPUs" in report and "total" in report
    layer, embed, head = param_counts(arch := model_arch(cfg))
    billions = (arch.num_layers * layer + embed + head) / 1e9
    assert abs(billions - MODELS[model]) / MODELS[model] < 0.01, billions
    # the paper's hyperparameters (HAPO_SPEC section 9)
    assert (cfg.data.train_batch_size, cfg.sampling.train.n, cfg.data.mini_batch_size) == (512, 16, 32)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay, cfg.optim.clip_grad) == (
        1e-6,
        10,
        0.1,
        1.0,
    )
    loss = cfg.algorithm.loss
    assert (loss.clip_low, loss.clip_high, loss.dual_clip_c, loss.pivot_quantile) == (0.2, 0.2, 10.0, 0.8)
    assert cfg.algorithm.adaptive_temperature.tau == 0.05 and (
        cfg.sampling.val.temperature,
        cfg.sampling.val.n,
    ) == (0.5, 8)


@pytest.mark.parametrize("model", MODELS)
def test_dapo_baseline_changes_only_the_algorithm(model):
    hapo, dapo = asdict(load(f"{model}_hapo")), asdict(load(f"{model}_dapo"))
    changed = {k for k in hapo if hapo[k] != dapo[k]}
    assert changed == {"algorithm", "trainer", "checkpoint"}  # run name -> run_dir -> checkpoint.dir
    assert {**hapo["checkpoint"], "dir": None} == {**dapo["checkpoint"], "dir": None}
    alg = dapo["algorithm"]
    assert (alg["loss"]["clip_high"], alg["loss"]["adaptive_clip"], alg["adv_estimator"]) == (
        0.28,
        False,
        "grpo",
    )
    assert alg["dynamic_sampling"]["enable"] and not alg["adaptive_temperature"]["enable"]


def test_a_layout_that_cannot_fit_is_refused():
    cfg = load("qwen3_14b_hapo", "parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false",
               "parallel.use_distributed_optimizer=false")  # fmt: skip
    with pytest.raises(ValueError, match="exceeds 80 GiB"):
        render_plan(cfg, cfg.cluster.nodes * cfg.cluster.gpus_per_node)


def test_dry_run_cli_prints_the_plan_or_names_the_bad_key(capsys):
    from megatron_hapo.config.__main__ import main

    recipe = str(RECIPES / "qwen2.5_math_7b_hapo.yaml")
    assert main([recipe, "--plan", "cluster.nodes=4"]) == 0
    assert "training   32 GPUs = TP 4 x PP 1 x CP 1 x DP 8" in capsys.readouterr().out
    assert main([recipe, "--plan", "parallel.tensor_model_parallel_size=3"]) == 2
    assert "parallel.tensor_model_parallel_size" in capsys.readouterr().err
