"""Cross-field rules: layout vs world size, batch divisibility, model shape, FP8 environment, paths."""

from __future__ import annotations

import json

import pytest

from megatron_hapo.config import (
    ConfigError,
    collect_issues,
    data_parallel_size,
    load_config,
    load_with_origins,
)
from megatron_hapo.config.loader import compose

from .conftest import CONFIGS, probe

REQUIRED = ["model.hf_path=m", "data.train_files=[t.jsonl]"]


def issues(overrides=(), world_size=None, check_env=False, **kw):
    loaded = compose(None, [*REQUIRED, *overrides])
    return collect_issues(
        loaded.cfg, world_size=world_size, origins=loaded.origins, check_env=check_env, **kw
    )


def keys(found):
    return {i.key for i in found}


def test_defaults_are_valid_on_one_node_of_8():
    assert issues() == []


def test_tp_pp_cp_dp_must_equal_world_size():
    found = issues(["parallel.tensor_model_parallel_size=2", "parallel.data_parallel_size=2"], world_size=8)
    assert len(found) == 1
    assert "TP x PP x CP x DP = 2 x 1 x 1 x 2 = 4 must equal the world size 8" in found[0].message
    assert "command line (parallel.data_parallel_size=2)" in found[0].source
    assert (
        issues(["parallel.tensor_model_parallel_size=2", "parallel.data_parallel_size=4"], world_size=8) == []
    )


def test_the_ranks_wait_for_rank_0_at_least_as_long_as_one_engine_call_may_take():
    found = issues(["trainer.lead_timeout_minutes=10"])  # request_timeout_s 3600 and startup_timeout_s 900
    assert [i.message.split(" lets ")[0] for i in found] == [
        "the other ranks would give up waiting for rank 0 (600 s) before rollout.startup_timeout_s (900 s)",
        "the other ranks would give up waiting for rank 0 (600 s) before rollout.request_timeout_s (3600 s)",
    ]
    assert "raise trainer.lead_timeout_minutes to at least 60" in found[1].message
    assert issues(["trainer.lead_timeout_minutes=60", "rollout.startup_timeout_s=600"]) == []
    assert keys(issues(["trainer.collective_timeout_minutes=0"])) == {"trainer.collective_timeout_minutes"}


def test_context_parallelism_refuses_what_a_cp_rank_cannot_compute():
    """CP > 1 trains (SDPA or TE attention, rows of one sequence or packed on the mask route, step
    statistics, a token-linear aggregation); each setting a CP rank cannot compute is refused by name."""
    cp = "parallel.context_parallel_size=2"
    assert issues([cp], world_size=8) == []
    budget = "data.max_tokens_per_micro_batch=65536"
    cases = {
        "model.local_attention=unfused": (
            "model.local_attention",
            "Megatron's unfused attention has no context",
        ),
        "data.sequence_packing=thd": (
            "data.sequence_packing",
            "THD packed rows are not split across CP ranks",
        ),
        "algorithm.loss.stats_scope=micro_batch": ("algorithm.loss.stats_scope", "holds 1/2"),
        "algorithm.loss.agg=seq-mean-token-mean": ("algorithm.loss.agg", "use token-mean"),
    }
    assert issues([budget, cp, "data.sequence_packing=mask"], world_size=8) == []  # the mask route is split
    for override, (key, message) in cases.items():
        assert issues([budget, override], world_size=8) == [] or override.endswith("thd")  # thd: needs TE
        found = issues([budget, cp, override], world_size=8)
        assert keys(found) == {f"parallel.context_parallel_size, {key}"}, (override, found)
        assert message in found[0].message


def test_model_parallel_must_divide_world_size_and_dp_is_derived():
    found = issues(["parallel.tensor_model_parallel_size=3"], world_size=8)
    assert any("TP x PP x CP = 3 must divide the world size 8" in i.message for i in found)
    cfg = compose(
        None, [*REQUIRED, "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"]
    ).cfg
    assert data_parallel_size(cfg, 16) == 4


def test_world_size_defaults_to_the_cluster_section():
    found = issues(
        ["parallel.tensor_model_parallel_size=4", "cluster.gpus_per_node=2", "rollout.tensor_parallel_size=2"]
    )
    assert any("cluster.nodes x cluster.gpus_per_node" in i.message for i in found)


def test_global_batch_divisible_by_dp_times_micro_batch():
    # 32 prompts x 16 samples = 512 responses per update; DP 8 x micro 3 = 24 does not divide it.
    found = issues(["data.micro_batch_size=3"], world_size=8)
    assert keys(found) == {
        "data.mini_batch_size, sampling.train.n, data.micro_batch_size, parallel.data_parallel_size"
    }
    assert "512" in found[0].message and "8 x 3" in found[0].message
    found = issues(["data.train_batch_size=100", "data.mini_batch_size=32"], world_size=8)
    assert "multiple of mini_batch_size" in found[0].message


def test_sequence_parallel_needs_tp_and_an_interleaved_pipeline_needs_pp():
    found = issues(["parallel.sequence_parallel=true"], world_size=8)
    assert keys(found) == {"parallel.sequence_parallel, parallel.tensor_model_parallel_size"}
    assert "needs TP > 1" in found[0].message
    vp2 = "parallel.virtual_pipeline_model_parallel_size=2"
    assert issues(["parallel.pipeline_model_parallel_size=2", vp2], world_size=8) == []
    for bad in (
        [vp2],
        ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=1"],
    ):
        found = issues(bad, world_size=8)
        assert keys(found) == {
            "parallel.virtual_pipeline_model_parallel_size, parallel.pipeline_model_parallel_size"
        }
        assert "needs PP > 1 and >= 2 model chunks per stage" in found[0].message
        assert "set virtual_pipeline_model_parallel_size=null" in found[0].message


def test_delayed_fp8_with_bf16_first_last_layers_is_rejected_even_without_env_checks():
    found = issues(
        ["precision.fp8=hybrid", "precision.fp8_recipe=delayed", "precision.first_last_layers_bf16=true"]
    )
    assert keys(found) == {"precision.fp8_recipe, precision.first_last_layers_bf16"}


def test_fp8_without_transformer_engine_is_a_hard_error():
    found = issues(
        ["precision.fp8=e4m3"],
        check_env=True,
        probe=probe(te="RuntimeError: cudnn shared object not found."),
    )
    te = [i for i in found if "Transformer Engine" in i.message]
    assert len(te) == 1 and "cudnn" in te[0].message and "never silently falls back" in te[0].message


@pytest.mark.parametrize(
    "recipe, cap, cuda, expect",
    [
        ("blockwise", (9, 0), (12, 9), None),
        ("blockwise", (8, 9), (12, 9), "needs compute capability >= sm90"),
        ("blockwise", (9, 0), (12, 4), "CUDA >= 12.9"),
        ("tensorwise", (8, 9), (12, 4), None),
        ("tensorwise", (8, 0), (12, 4), "needs compute capability >= sm89"),
        ("delayed", None, None, "none is visible"),
    ],
)
def test_fp8_needs_a_capable_gpu(recipe, cap, cuda, expect):
    found = issues(
        [f"precision.fp8_recipe={recipe}", "precision.fp8=hybrid"],
        check_env=True,
        probe=probe(cap=cap, cuda=cuda),
    )
    found = [i for i in found if i.key.startswith("precision")]
    if expect is None:
        assert found == []
    else:
        assert len(found) == 1 and expect in found[0].message


def test_te_layer_spec_needs_te():
    found = issues(["model.layer_spec=te"], check_env=True, probe=probe(te="ImportError: no module"))
    assert "model.layer_spec" in keys(found)


def test_local_attention_is_refused_where_the_te_spec_would_ignore_it():
    found = issues(["model.layer_spec=te", "model.local_attention=sdpa"])
    assert keys(found) == {"model.local_attention, model.layer_spec"}
    assert "layer_spec=te builds Transformer Engine's" in found[0].message

    # layer_spec=auto: refused only where TE imports (auto then picks TE's spec)
    def attention_issues(overrides, te):
        found = issues(overrides, check_env=True, probe=probe(te=te))
        return [i for i in found if "model.local_attention" in i.key]

    found = attention_issues(["model.local_attention=unfused"], te=None)
    assert len(found) == 1 and "picks Transformer Engine" in found[0].message
    assert attention_issues(["model.local_attention=unfused"], te="ImportError: no module") == []
    assert attention_issues(["model.layer_spec=local", "model.local_attention=sdpa"], te=None) == []


def test_rollout_tp_vs_gpus_per_server_and_world():
    found = issues(["rollout.tensor_parallel_size=2", "rollout.gpus_per_server=3"], world_size=8)
    assert any("multiple of the server TP size" in i.message for i in found)
    found = issues(["rollout.tensor_parallel_size=16"], world_size=16, **{})
    assert any("cannot span more than one node" in i.message for i in found)
    found = issues(["rollout.engine=fleet"])
    assert any("needs the servers' addresses" in i.message for i in found)
    found = issues(["rollout.engine=fleet", "rollout.num_servers=2", "rollout.server_addresses=[http://a:1]"])
    assert any("1 server addresses given but num_servers=2" in i.message for i in found)
    found = issues(
        ["rollout.engine=fleet", "rollout.launch_servers=true", "rollout.router_address=http://r:1"]
    )
    assert any("either attach (launch_servers=false) or launch" in i.message for i in found)


@pytest.mark.parametrize(
    "override, key",
    [
        ("algorithm.loss.clip_low=1.0", "algorithm.loss.clip_low"),
        ("algorithm.loss.clip_low=0.6", "algorithm.loss.clip_low, algorithm.loss.clip_alpha"),
        ("algorithm.loss.dual_clip_c=1.0", "algorithm.loss.dual_clip_c"),
        ("algorithm.loss.pivot_quantile=1.5", "algorithm.loss.pivot_quantile"),
        ("algorithm.adaptive_temperature.tau=1.0", "algorithm.adaptive_temperature.tau"),
        ("sampling.train.n=1", "sampling.train.n"),
        ("sampling.val.top_p=0", "sampling.val.top_p"),
        ("sampling.train.top_k=0", "sampling.train.top_k"),
        ("reward.overlong.buffer_len=20000", "reward.overlong.buffer_len, rollout.max_new_tokens"),
        ("optim.min_lr=1.0", "optim.lr, optim.min_lr"),
        ("data.micro_batch_size=0", "data.micro_batch_size"),
    ],
)
def test_value_ranges(override, key):
    assert key in keys(issues([override]))


def test_every_problem_is_reported_at_once(write):
    path = write(
        "bad.yaml", "parallel: {tensor_model_parallel_size: 3}\nalgorithm: {loss: {pivot_quantile: 2.0}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, REQUIRED, world_size=8, check_env=False)
    assert len(e.value.issues) >= 2
    assert all(str(path) in i.source for i in e.value.issues)
    assert "2 problems" in str(e.value) or "3 problems" in str(e.value)


def test_model_shape_rules_read_config_json(model_dir, data_file):
    d = model_dir(heads=8, kv=2, layers=6, max_pos=4096)
    base = [
        f"model.hf_path={d}",
        f"data.train_files=[{data_file}]",
        "rollout.max_new_tokens=2048",
        "reward.overlong.buffer_len=512",
    ]
    ok = collect_issues(
        compose(None, [*base, "parallel.tensor_model_parallel_size=2"]).cfg, world_size=8, probe=probe()
    )
    assert ok == []
    found = collect_issues(
        compose(None, [*base, "parallel.tensor_model_parallel_size=4"]).cfg, world_size=8, probe=probe()
    )
    assert any("number of KV heads (2)" in i.message and str(d) in i.message for i in found)
    found = collect_issues(
        compose(None, [*base, "parallel.pipeline_model_parallel_size=4"]).cfg, world_size=8, probe=probe()
    )
    assert any("does not divide the number of layers (6)" in i.message for i in found)
    vp = ["parallel.pipeline_model_parallel_size=2", "parallel.virtual_pipeline_model_parallel_size=2"]
    found = collect_issues(compose(None, [*base, *vp]).cfg, world_size=8, probe=probe())
    assert [i.key for i in found] == [
        "parallel.pipeline_model_parallel_size, parallel.virtual_pipeline_model_parallel_size"
    ]
    assert "PP x VP = 2 x 2 = 4 model chunks do not divide the number of layers (6)" in found[0].message
    vp[1] = "parallel.virtual_pipeline_model_parallel_size=3"
    assert collect_issues(compose(None, [*base, *vp]).cfg, world_size=8, probe=probe()) == []
    found = collect_issues(
        compose(None, [*base, "rollout.max_new_tokens=4000"]).cfg, world_size=8, probe=probe()
    )
    assert any("exceeds max_position_embeddings=4096" in i.message for i in found)
    fixed = compose(
        None, [*base, "rollout.max_new_tokens=4000", "model.override_config.max_position_embeddings=8192"]
    )
    assert collect_issues(fixed.cfg, world_size=8, probe=probe()) == []


def test_model_dir_without_config_json(tmp_path, data_file):
    loaded = compose(None, [f"model.hf_path={tmp_path}", f"data.train_files=[{data_file}]"])
    found = collect_issues(loaded.cfg, probe=probe())
    assert any(i.key == "model.hf_path" and "config.json" in i.message for i in found)


def test_paths_must_exist(tmp_path, data_file):
    found = issues(
        [
            f"data.train_files=[{data_file}, {tmp_path}/nope.parquet]",
            "eval.benchmarks=[missing.jsonl]",
            "checkpoint.resume=/no/ckpt",
        ],
        check_env=True,
        probe=probe(),
    )
    got = keys(found)
    assert {"data.train_files[1]", "eval.benchmarks[0]", "checkpoint.resume"} <= got
    assert "data.train_files[0]" not in got
    src = next(i for i in found if i.key == "data.train_files[1]").source
    assert src.startswith("command line (data.train_files=")


def test_cpu_demo_config_is_valid_once_the_tiny_model_exists(model_dir, monkeypatch):
    monkeypatch.chdir(CONFIGS.parents[1])  # the demo's data paths are relative to the repo root
    d = model_dir(heads=4, kv=2, layers=2, max_pos=256)
    loaded = load_with_origins(
        CONFIGS / "cpu_demo.yaml", [f"model.hf_path={d}"], world_size=1, probe=probe(cap=None, cuda=None)
    )
    cfg = loaded.cfg
    assert cfg.trainer.device == "cpu" and cfg.rollout.engine == "inprocess"
    assert cfg.parallel.tensor_model_parallel_size == cfg.parallel.pipeline_model_parallel_size == 1
    assert cfg.algorithm.loss.clip_low == 0.2  # inherited from base.yaml
    assert loaded.origins["algorithm.loss.clip_low"].endswith("base.yaml")
    assert loaded.origins["data.train_batch_size"].endswith("cpu_demo.yaml")


def test_cpu_demo_hf_path_honours_the_environment(monkeypatch):
    monkeypatch.setenv("HAPO_TINY_MODEL", "/tmp/elsewhere")
    cfg = load_config(CONFIGS / "cpu_demo.yaml", check_env=False, world_size=1)
    assert cfg.model.hf_path == "/tmp/elsewhere"


@pytest.mark.parametrize("key", ["eval.max_prompts", "eval.max_new_tokens", "trainer.total_steps"])
def test_optional_counts_must_be_positive_when_set(key):
    assert key in keys(issues([f"{key}=0"]))


FLEET = ["rollout.engine=fleet", "rollout.launch_servers=true"]


def test_overlap_needs_a_fleet_and_tis():
    assert issues([*FLEET, "rollout.max_staleness=1", "algorithm.loss.tis_cap=2.0"]) == []
    found = sorted(i.message for i in issues(["rollout.max_staleness=1"]))
    assert len(found) == 2
    assert "needs the engine in other processes (rollout.engine=fleet)" in found[0]
    assert "set algorithm.loss.tis_cap" in found[1]
    assert "must be 0 (on-policy) or 1" in issues([*FLEET, "rollout.max_staleness=2"])[0].message


def test_over_sampling_needs_dynamic_sampling_and_a_fleet():
    ds = ["algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.over_sample=1.5"]
    assert issues([*FLEET, *ds]) == []
    assert "needs rollout.engine=fleet" in issues(ds)[0].message
    assert (
        "only applies to dynamic sampling"
        in issues([*FLEET, "algorithm.dynamic_sampling.over_sample=2"])[0].message
    )
    assert "must be >= 1" in issues([*FLEET, "algorithm.dynamic_sampling.over_sample=0.5"])[0].message


def test_a_local_mixture_of_experts_is_recognised_as_transformers_5_writes_it(tmp_path):
    """transformers 5 saves Qwen3-MoE's expert count as num_local_experts (released configs: num_experts)."""
    import json

    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    model = make_tiny_hf_model(tmp_path / "moe", "qwen3_moe")
    assert json.loads((model / "config.json").read_text())["num_local_experts"] == 8
    base = [
        f"model.hf_path={model}",
        "data.train_files=[t.jsonl]",
        "rollout.max_new_tokens=512",
        "reward.overlong.buffer_len=64",
    ]

    def found(*overrides):
        return collect_issues(compose(None, [*base, *overrides]).cfg, world_size=8, check_env=False)

    assert found("parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true") == []
    assert found("parallel.expert_model_parallel_size=8") == []
    no_sp = found("parallel.tensor_model_parallel_size=2")
    assert [i.key for i in no_sp] == ["parallel.sequence_parallel, parallel.tensor_model_parallel_size"]
    assert "a mixture of experts (8 experts" in no_sp[0].message
    messages = [i.message for i in found("parallel.expert_model_parallel_size=3")]
    assert "EP=3 does not divide the 8 experts (from " in messages[-1], messages


@pytest.mark.parametrize("decay", [0, -3, 10])
def test_decay_steps_must_be_null_or_longer_than_the_warmup(decay):
    """build_scheduler would read 0 as null and make -3 drop the LR to min_lr right after the warmup."""
    found = issues([f"optim.decay_steps={decay}", "optim.warmup_steps=10"])
    assert keys(found) == {"optim.decay_steps, optim.warmup_steps"}
    assert f"decay_steps={decay} must be greater than warmup_steps=10" in found[0].message
    assert "set it to null" in found[0].message
    assert (
        issues(["optim.decay_steps=11", "optim.warmup_steps=10"]) == issues(["optim.decay_steps=null"]) == []
    )


@pytest.mark.parametrize(
    "key", ["rollout.request_timeout_s", "rollout.startup_timeout_s", "rollout.sync_timeout_s"]
)
@pytest.mark.parametrize("value", [0, -5])
def test_rollout_timeouts_must_be_positive(key, value):
    found = issues([f"{key}={value}"])
    assert keys(found) == {key}
    assert "must be > 0" in found[0].message


def test_a_misspelled_override_config_key_is_refused(tmp_path):
    """A key neither config.json nor the model's transformers config class has is read by nothing."""
    d = tmp_path / "qwen2"
    d.mkdir()
    shape = {"num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 4}
    (d / "config.json").write_text(
        json.dumps({"model_type": "qwen2", **shape, "max_position_embeddings": 4096})
    )
    base = [f"model.hf_path={d}", "data.train_files=[t.jsonl]", "rollout.max_new_tokens=2048"]
    base.append("reward.overlong.buffer_len=512")
    with pytest.raises(ConfigError) as e:
        load_config(None, [*base, "model.override_config.num_hiden_layers=2"], world_size=8, check_env=False)
    assert [i.key for i in e.value.issues] == ["model.override_config.num_hiden_layers"]
    message = e.value.issues[0].message
    assert "model type qwen2" in message and "did you mean 'num_hidden_layers'?" in message
    assert "command line (model.override_config.num_hiden_layers=2)" in e.value.issues[0].source
    ok = [
        "model.override_config.num_hidden_layers=2",  # in config.json
        "model.override_config.sliding_window=1024",  # not in this config.json, but a Qwen2Config field
        "model.override_config.rope_scaling={rope_type: linear, factor: 2.0}",  # a dict is taken whole
    ]
    assert (
        load_config(None, [*base, *ok], world_size=8, check_env=False).model.override_config[
            "num_hidden_layers"
        ]
        == 2
    )


def test_an_unknown_scorer_or_missing_extra_module_is_refused_at_load():
    found = issues(["reward.scorer=dapoo"])
    assert keys(found) == {"reward.scorer"}
    message = found[0].message  # the registry may hold test scorers too, registered by other tests
    assert "'dapoo'" in message and "'dapo'" in message and "'math_verify'" in message
    assert issues(["reward.scorer=dapo"]) == []
    # custom scorers register in the workers' extra modules: the name is checked there, not here
    assert issues(["reward.scorer=mine", "reward.extra_modules=[json]"]) == []
    env = issues(
        ["reward.extra_modules=[json, no_such_scorers, no_such_pkg.scorers]"], check_env=True, probe=probe()
    )
    extra = [i for i in env if i.key.startswith("reward.")]
    assert [i.key for i in extra] == ["reward.extra_modules[1]", "reward.extra_modules[2]"]
    assert "'no_such_scorers' cannot be found" in extra[0].message and "PYTHONPATH" in extra[0].message
    assert "No module named 'no_such_pkg'" in extra[1].message


def test_benchmarks_of_one_file_stem_are_refused_at_load():
    from megatron_hapo.data import DataError
    from megatron_hapo.eval.benchmarks import benchmark_names

    files = ["b/a.parquet", "c.jsonl", "a.jsonl"]
    with pytest.raises(DataError):  # what the evaluator would raise after the model is built
        benchmark_names(files)
    found = issues([f"eval.benchmarks=[{', '.join(files)}]"])
    assert keys(found) == {"eval.benchmarks[0], eval.benchmarks[2]"}
    assert "b/a.parquet and a.jsonl both get the benchmark name 'a'" in found[0].message
    assert "command line (eval.benchmarks=" in found[0].source
    assert issues(["eval.benchmarks=[b/a.parquet, c.jsonl]"]) == []
