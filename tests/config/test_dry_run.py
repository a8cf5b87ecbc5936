"""``hapo-train --dry-run`` checks what the real run checks about the model (issue 17, bug 4): heads and KV
heads vs TP, layers vs PP x VPP, prompt + response vs the context, vocabulary padding; the checks that
need the machine are named as skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megatron_hapo.config import ConfigError, load_config
from megatron_hapo.config.model_info import allowed_tp_sizes, padded_vocab_size, pp_problems, tp_problems
from megatron_hapo.config.plan import dry_run, layer_activations, model_arch

RECIPE = str(Path(__file__).resolve().parents[2] / "examples/configs/recipes/qwen2.5_math_7b_hapo.yaml")


def _problems(*overrides: str, recipe: str = RECIPE) -> list:
    with pytest.raises(ConfigError) as e:
        dry_run(recipe, list(overrides))
    return e.value.issues


def test_tp_8_for_4_kv_heads_is_refused():
    issues = _problems("parallel.tensor_model_parallel_size=8")  # Qwen2.5-Math-7B: 28 heads, 4 KV heads
    kv = [i for i in issues if "number of KV heads (4)" in i.message]
    assert len(kv) == 1 and kv[0].key == "parallel.tensor_model_parallel_size"
    assert "Qwen2.5-Math-7B" in kv[0].message and "parallel.tensor_model_parallel_size=8" in kv[0].source


def test_pp_3_for_28_layers_is_refused():
    issues = _problems("parallel.pipeline_model_parallel_size=3", "cluster.nodes=3")  # 24 GPUs: layout ok
    assert [i.key for i in issues] == ["parallel.pipeline_model_parallel_size"]
    assert "PP=3 does not divide the number of layers (28)" in issues[0].message
    assert "training" in dry_run(RECIPE, ["parallel.pipeline_model_parallel_size=2"])


def test_a_rollout_tp_sglang_cannot_shard_is_refused():
    issues = _problems("rollout.tensor_parallel_size=8", "rollout.gpus_per_server=8")  # 28 heads, 4 KV heads
    assert [i.key for i in issues] == ["rollout.tensor_parallel_size"]
    assert "rollout TP=8 does not divide the number of attention heads (28)" in issues[0].message
    assert "training" in dry_run(RECIPE, ["rollout.tensor_parallel_size=2", "rollout.gpus_per_server=2"])


def test_a_response_longer_than_the_context_is_refused():
    issues = _problems("rollout.max_new_tokens=60000")  # a 32k context
    context = [i for i in issues if "max_position_embeddings" in i.message]  # (the micro-batch budgets too)
    assert len(context) == 1 and "1024 + 60000 = 61024 tokens exceeds max_position_embeddings=32768" in (
        context[0].message
    )
    assert context[0].key == "data.max_prompt_length, rollout.max_new_tokens"


def test_vocabulary_padding_is_checked_and_printed():
    issues = _problems("model.make_vocab_size_divisible_by=0")
    assert [i.key for i in issues] == ["model.make_vocab_size_divisible_by"]
    plan = dry_run(RECIPE, [])
    assert "vocab 152064 (padded to 152064 = a multiple of 128 x TP)" in plan
    assert padded_vocab_size(151936, 4, 128) == 152064 and padded_vocab_size(320, 3, 128) == 384


def test_the_plan_names_the_skipped_hardware_checks():
    plan = dry_run(RECIPE, [])
    skipped = next(line for line in plan.splitlines() if line.startswith("skipped"))
    assert (
        "Transformer Engine" in skipped and "GPU compute capability" in skipped and "paths exist" in skipped
    )


def test_a_local_model_directory_is_checked_without_the_environment(model_dir):
    d = model_dir(heads=8, kv=2, layers=4, max_pos=512)  # the CPU demo's config with this model, 4 "GPUs"
    demo = str(Path(RECIPE).parents[1] / "cpu_demo.yaml")
    base = [f"model.hf_path={d}", "cluster.gpus_per_node=4"]
    issues = _problems(*base, "parallel.tensor_model_parallel_size=4", recipe=demo)
    assert [i.key for i in issues] == ["parallel.tensor_model_parallel_size"]
    assert "number of KV heads (2)" in issues[0].message and str(d) in issues[0].message
    issues = _problems(*base, "rollout.max_new_tokens=500", "reward.overlong.buffer_len=8", recipe=demo)
    context = [i for i in issues if "max_position_embeddings" in i.message]  # (the micro-batch budgets too)
    assert len(context) == 1 and "max_position_embeddings=512" in context[0].message


def test_the_rules_are_the_model_builders():
    """``ModelArch.check_layout`` (what the real run applies when it builds the model) uses the same rules."""
    from megatron_hapo.models import load_arch
    from megatron_hapo.models.errors import ParallelLayoutError
    from megatron_hapo.models.known_configs import known_config

    arch = load_arch(known_config("Qwen2.5-Math-7B"))
    with pytest.raises(ParallelLayoutError) as e:
        arch.check_layout(8, 3)
    assert str(e.value).endswith("; ".join(tp_problems(arch.shape(), 8) + pp_problems(arch.shape(), 3)))
    assert allowed_tp_sizes(arch.shape()) == [1, 2, 4]


SMALL = str(Path(RECIPE).with_name("qwen2.5_math_1.5b_hapo.yaml"))  # TP 1: the budgets show undivided


def _plan(recipe: str, *overrides: str):
    from megatron_hapo.config import load_config
    from megatron_hapo.config.plan import memory_plan, model_arch

    cfg = load_config(recipe, list(overrides), check_env=False)
    return memory_plan(cfg, model_arch(cfg), dp=8)


def test_the_memory_plan_follows_the_token_budget_not_micro_batch_size():
    longest = 1024 + 10240  # the recipe's budget: one longest sequence
    one, four = _plan(SMALL), _plan(SMALL, f"data.max_tokens_per_micro_batch={4 * longest}")
    assert four.logits == 4 * one.logits and 3.9 < four.activations / one.activations <= 4
    # fixed micro-batches: micro_batch_size rows of the longest sequence
    fixed = _plan(SMALL, "data.max_tokens_per_micro_batch=null", "data.max_tokens_per_old_micro_batch=null",
                  "data.sequence_packing=none", "data.micro_batch_size=2")  # fmt: skip
    assert fixed.logits == 2 * one.logits


def test_the_headroom_line_names_the_largest_budgets_that_fit():
    """Each budget alone grows to where the estimate meets the GPU's memory, and no further."""
    text = dry_run(SMALL, [])
    found = dict(re.findall(r"data\.(max_tokens_per_\w+) up to (\d+) \(now \d+\)", text))
    assert set(found) == {"max_tokens_per_micro_batch", "max_tokens_per_old_micro_batch"}, text
    from megatron_hapo.config.plan import memory_plan
    from megatron_hapo.config.validate import data_parallel_size

    for key, tokens in found.items():
        plans = []
        for budget in (int(tokens), int(tokens) + 1):
            cfg = load_config(SMALL, [f"data.{key}={budget}"], check_env=False)
            dp = data_parallel_size(cfg, cfg.cluster.nodes * cfg.cluster.gpus_per_node)  # as the dry run's
            plans.append(memory_plan(cfg, model_arch(cfg), dp).total / 2**30)
        assert plans[0] <= 80 < plans[1], (key, tokens, plans)


def test_local_attention_on_packed_rows_counts_its_score_matrices_and_the_old_pass_its_own_budget():
    te = _plan(SMALL, "model.layer_spec=te")
    unfused = _plan(SMALL, "model.layer_spec=local", "model.local_attention=unfused")
    sdpa = _plan(SMALL, "model.layer_spec=local")  # local_attention auto: SDPA, as on a GPU
    assert unfused.activations > 4 * te.activations  # a packed row of 11264 tokens: 12 heads x s^2 scores
    assert unfused.old_pass > 4 * te.old_pass > unfused.activations  # the old pass packs 2 x the budget
    # SDPA keeps no scores, only the packed row's mask as a bf16 bias: 2 s^2 bytes against 6 x 12 heads s^2;
    # and, on a packed row, K and V repeated to the 12 query heads where TE keeps the 2 KV heads' (full recompute: one layer)
    assert te.activations < sdpa.activations < unfused.activations / 4
    arch = model_arch(load_config(SMALL, [], check_env=False))
    repeated_kv = layer_activations(arch, "sdpa", masked=True).total - layer_activations(arch, "te").total
    assert repeated_kv == 4 * (12 - 2) * 128
    assert sdpa.activations - te.activations == pytest.approx(2 * 11264**2 + repeated_kv * 11264)
    # the per-layer terms are printed (docs/training.md "What a layer keeps for the backward")
    assert "(per layer and token: norms 6.2 KB, attention 11.3 KB, MLP 56.8 KB)" in dry_run(SMALL, [])
    # selective recompute (the core attention's) drops the unfused attention's scores; with TE's it keeps
    # more than no recompute, and the plan says so
    selective, none = "model.recompute_granularity=selective", "model.recompute_granularity=none"
    assert (
        _plan(SMALL, "model.layer_spec=te", selective).activations
        > _plan(SMALL, "model.layer_spec=te", none).activations
    )
    local_unfused = ("model.layer_spec=local", "model.local_attention=unfused")
    unfused_sel, unfused_none = (_plan(SMALL, *local_unfused, r) for r in (selective, none))
    assert unfused_sel.activations < unfused_none.activations / 4  # one layer's scores, while it recomputes
    text = dry_run(SMALL, ["model.layer_spec=te", selective])
    assert (
        "note: selective recompute keeps" in text and "use model.recompute_granularity=none or full" in text
    )
    assert "note: selective" not in dry_run(SMALL, [*local_unfused, selective])


def test_an_interleaved_pipeline_holds_more_micro_batches_in_flight():
    from megatron_hapo.config.plan import pipeline_in_flight

    assert pipeline_in_flight(1, None, 8) == 1 and pipeline_in_flight(4, None, 8) == 4
    assert pipeline_in_flight(4, None, 2) == 2
    # Megatron's first rank at PP=4, VP=2, 8 micro-batches: 2 x 3 + 1 x 4 = 10 warm-up chunk forwards + 1
    assert pipeline_in_flight(4, 2, 8) == 11 / 2
    assert pipeline_in_flight(4, 2, 3) == 4  # rounded up to M = PP: every chunk forward before a backward
    pp2 = _plan(SMALL, "parallel.pipeline_model_parallel_size=2")
    vp2 = _plan(
        SMALL, "parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2"
    )
    assert vp2.activations == pytest.approx(pp2.activations * 2.5 / 2)
    assert (vp2.weights, vp2.logits, vp2.old_pass) == (pp2.weights, pp2.logits, pp2.old_pass)


def test_context_parallelism_divides_the_tokens_a_rank_holds():
    """CP=2: a rank holds half of every sequence (activations and logits halve, up to the whole sequence's K
    and V per layer), and the distributed optimizer shards over DP x CP."""
    one = _plan(SMALL, "model.layer_spec=te", "parallel.context_parallel_size=1")
    two = _plan(SMALL, "model.layer_spec=te", "parallel.context_parallel_size=2")
    assert two.logits == one.logits / 2 and two.optimizer == one.optimizer / 2
    assert two.weights == one.weights and two.grads == one.grads
    assert one.activations / 2 < two.activations < 0.55 * one.activations
    # the whole sequence's K and V: SDPA on causal rows keeps the 2 KV heads' (flash takes them grouped), TE's
    # planned at the 12 query heads
    sdpa1, sdpa2 = (
        _plan(
            SMALL,
            "model.layer_spec=local",
            "data.sequence_packing=none",
            f"parallel.context_parallel_size={c}",
        )
        for c in (1, 2)
    )
    whole_kv = {
        "sdpa": sdpa2.activations - sdpa1.activations / 2,
        "te": two.activations - one.activations / 2,
    }
    assert whole_kv["sdpa"] / whole_kv["te"] == pytest.approx(2 / 12), whole_kv
    text = dry_run(SMALL, ["parallel.context_parallel_size=2"])
    assert "x CP 2 x DP" in text and "CP vs attention, packing and loss" in text
    # a packed row on the local spec (SDPA): a CP rank keeps its query rows of the mask
    packed = [f"parallel.context_parallel_size={c}" for c in (1, 2)]
    mask1, mask2 = (_plan(SMALL, "model.layer_spec=local", "data.sequence_packing=mask", c) for c in packed)
    assert mask1.activations / 2 < mask2.activations < 0.55 * mask1.activations


def test_a_mixture_of_experts_is_planned_with_its_active_parameters_and_its_limits():
    moe = ["model.hf_path=Qwen/Qwen3-30B-A3B", "parallel.tensor_model_parallel_size=4"]
    plan = dry_run(RECIPE, moe)
    # Qwen3-30B-A3B's published sizes: 30.5 B parameters, 3.3 B active
    assert "qwen3_moe, 30.53 B params (3.35 B active: 8 of 128 experts per token)" in plan, plan
    issues = _problems(*moe, "precision.fp8=hybrid")
    assert [i.key for i in issues] == ["precision.fp8"]
    assert "FP8 training of a mixture of experts (128 experts" in issues[0].message
    issues = _problems(*moe, "parallel.sequence_parallel=false")
    assert [i.key for i in issues] == ["parallel.sequence_parallel, parallel.tensor_model_parallel_size"]
    assert "at TP=4 needs sequence parallelism" in issues[0].message
    plan = dry_run(RECIPE, [*moe, "algorithm.rollout_routing_replay=true"])  # 48 layers x 8 experts per token
    assert re.search(r"routing replay: 384 B/token, up to [\d.]+ GB of routed experts per step", plan), plan
    issues = _problems("algorithm.rollout_routing_replay=true")  # Qwen2.5-Math-7B is dense
    assert [i.key for i in issues] == ["algorithm.rollout_routing_replay"]
    assert "has no experts: set algorithm.rollout_routing_replay=false" in issues[0].message


def test_expert_parallelism_is_checked_against_the_experts_and_the_data_parallel_ranks():
    moe = ["model.hf_path=Qwen/Qwen3-30B-A3B", "parallel.tensor_model_parallel_size=4"]  # 16 GPUs: DP 4

    def weights_gib(plan: str) -> float:
        return float(re.search(r"weights +([\d.]+) GiB", plan).group(1))

    plan = dry_run(RECIPE, [*moe, "parallel.expert_model_parallel_size=4"])
    assert "+ expert parallel (EP 4)" in plan
    # 29.0 B of the 30.5 B parameters are experts: a quarter of them per rank
    assert weights_gib(plan) < weights_gib(dry_run(RECIPE, moe)) / 3, plan
    issues = _problems(*moe, "parallel.expert_model_parallel_size=8")
    assert [i.key for i in issues] == [
        "parallel.expert_model_parallel_size, parallel.context_parallel_size, parallel.data_parallel_size"
    ]
    assert "expert parallelism EP=8 must divide DP x CP = 4" in issues[0].message
    issues = _problems(*moe, "parallel.expert_model_parallel_size=3", "cluster.nodes=3")  # DP 6
    assert "EP=3 does not divide the 128 experts (from the known config of Qwen/Qwen3-30B-A3B)" in [
        i.message for i in issues
    ]
    issues = _problems("parallel.expert_model_parallel_size=2")  # Qwen2.5-Math-7B is dense
    assert [i.key for i in issues] == ["parallel.expert_model_parallel_size"]
    assert "has none: set parallel.expert_model_parallel_size=1" in issues[0].message
