"""Loading: defaults inheritance, interpolation, overrides, type errors, unknown keys, required keys."""

from __future__ import annotations

import pytest

from megatron_hapo.config import ConfigError, RootConfig, load_config, load_with_origins, save_resolved
from megatron_hapo.config.loader import compose

REQUIRED = ["model.hf_path=m", "data.train_files=[t.jsonl]"]


def load(path, overrides=(), **kw):
    return load_config(path, [*REQUIRED, *overrides], check_env=False, **kw)


def test_schema_defaults_only_need_the_required_keys():
    cfg = load(None)
    assert isinstance(cfg, RootConfig)
    assert cfg.algorithm.loss.clip_high == 0.2 and cfg.sampling.val.temperature == 0.5
    assert cfg.checkpoint.dir == "runs/hapo/checkpoints"  # ${trainer.run_dir} resolved


def test_recipe_inherits_base_and_overrides_a_few_lines(write):
    write("base.yaml", "optim: {lr: 1.0e-6, warmup_steps: 10}\ntrainer: {experiment_name: base}\n")
    recipe = write("recipe.yaml", "defaults: base.yaml\noptim: {lr: 2.0e-6}\n")
    cfg = load(recipe)
    assert cfg.optim.lr == 2.0e-6  # the recipe wins
    assert cfg.optim.warmup_steps == 10  # the base fills the rest
    assert cfg.trainer.run_dir == "runs/base"


def test_defaults_list_merges_in_order_and_nests(write):
    write("a.yaml", "optim: {lr: 1.0, warmup_steps: 1}\n")
    write("sub/b.yaml", "defaults: ../a.yaml\noptim: {lr: 2.0}\n")  # relative to b.yaml's folder
    write("c.yaml", "optim: {lr: 3.0, eps: 0.5}\n")
    top = write("top.yaml", "defaults: [sub/b.yaml, c.yaml]\noptim: {eps: 0.25}\n")
    loaded = load_with_origins(top, REQUIRED, check_env=False)
    o = loaded.cfg.optim
    assert (o.lr, o.warmup_steps, o.eps) == (3.0, 1, 0.25)
    assert [p.name for p in loaded.files] == ["a.yaml", "b.yaml", "c.yaml", "top.yaml"]
    assert loaded.origins["optim.warmup_steps"].endswith("a.yaml")
    assert loaded.origins["optim.lr"].endswith("c.yaml")
    assert loaded.origins["model.hf_path"] == "command line (model.hf_path=m)"
    header = loaded.header()
    assert "a.yaml" in header and header.endswith("override data.train_files=[t.jsonl]")


def test_interpolation_across_sections_and_env(write, monkeypatch):
    monkeypatch.setenv("HAPO_TEST_RUNS", "/scratch/runs")
    path = write(
        "x.yaml",
        """
        trainer: {experiment_name: exp1, run_dir: "${oc.env:HAPO_TEST_RUNS}/${trainer.experiment_name}"}
        eval: {max_new_tokens: "${rollout.max_new_tokens}"}
        rollout: {max_new_tokens: 8192}
        """,
    )
    cfg = load(path)
    assert cfg.trainer.run_dir == "/scratch/runs/exp1"
    assert cfg.checkpoint.dir == "/scratch/runs/exp1/checkpoints"
    assert cfg.eval.max_new_tokens == 8192


def test_dotlist_overrides_parse_yaml_values():
    cfg = load(
        None,
        [
            "optim.lr=3e-6",
            "rollout.stop=[a, '</s>']",
            "precision.fp8=hybrid",
            "model.override_config.rope_theta=1e6",
        ],
    )
    assert cfg.optim.lr == 3e-6
    assert cfg.rollout.stop == ["a", "</s>"]
    assert cfg.precision.fp8 == "hybrid"
    assert cfg.model.override_config == {"rope_theta": 1e6}
    assert load(None, ["precision.fp8=null"]).precision.fp8 is None


def test_unknown_key_in_file_names_the_file_and_suggests(write):
    path = write("x.yaml", "parallel:\n  tensor_model_paralel_size: 2\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    msg = str(e.value)
    assert "parallel.tensor_model_paralel_size" in msg and "unknown key" in msg
    assert "did you mean 'parallel.tensor_model_parallel_size'" in msg
    assert str(path) in msg


def test_unknown_key_in_other_section_suggests_the_right_section():
    with pytest.raises(ConfigError, match=r"did you mean 'optim.lr'") as e:
        load(None, ["trainer.lr=1"])
    assert "command line (trainer.lr=1)" in str(e.value)


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match=r"did you mean 'rollout'"):
        load(None, ["rolout.n=3"])


def test_unknown_key_in_a_parent_file_names_the_parent(write):
    base = write("base.yaml", "optim: {learning_rate: 1}\n")
    child = write("child.yaml", "defaults: base.yaml\n")
    with pytest.raises(ConfigError) as e:
        load(child)
    assert str(base) in str(e.value) and "optim.learning_rate" in str(e.value)


def test_wrong_type_names_key_and_file(write):
    path = write("x.yaml", "parallel: {tensor_model_parallel_size: two}\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    issue = e.value.issues[0]
    assert issue.key == "parallel.tensor_model_parallel_size" and issue.source == str(path)
    assert "two" in issue.message


def test_bad_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"expected one of \['signed', 'released'\]"):
        load(None, ["algorithm.loss.entropy_mode=intended"])


def test_interpolated_value_of_wrong_type_names_the_file_that_set_it(write):
    path = write("x.yaml", "data: {seed: '${trainer.experiment_name}'}\n")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.issues[0].key == "data.seed" and e.value.issues[0].source == str(path)


def test_missing_required_values_are_all_listed(write):
    path = write("x.yaml", "optim: {lr: 1.0e-6}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, check_env=False)
    keys = {i.key for i in e.value.issues}
    assert keys == {"model.hf_path", "data.train_files"}
    assert "required value not set" in str(e.value)


def test_required_value_left_as_markers_in_a_base_is_filled_by_a_recipe():
    cfg = load_config(
        __import__("pathlib").Path(__file__).parents[2] / "examples/configs/base.yaml",
        ["model.hf_path=Qwen/Qwen2.5-Math-1.5B", "data.train_files=[d.parquet]"],
        check_env=False,
    )
    assert cfg.data.train_batch_size == 512 and cfg.sampling.train.n == 16
    assert cfg.data.seed == cfg.trainer.seed  # ${trainer.seed}


@pytest.mark.parametrize(
    "text, match",
    [
        ("a: [1\n", "YAML syntax error"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("defaults: {x: 1}\n", "must be a file path or a list"),
        ("defaults: nowhere.yaml\n", "config file not found"),
    ],
)
def test_broken_files(write, text, match):
    path = write("x.yaml", text)
    with pytest.raises(ConfigError, match=match) as e:
        load(path)
    assert str(path) in str(e.value)


def test_inheritance_cycle(write):
    write("a.yaml", "defaults: b.yaml\n")
    b = write("b.yaml", "defaults: a.yaml\n")
    with pytest.raises(ConfigError, match="inheritance cycle"):
        load(b)


@pytest.mark.parametrize("override", ["optim.lr", "=3", "+optim.new=1", "~optim.lr"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError, match="override"):
        compose(None, [override])


def test_resolved_config_round_trips(tmp_path, write, capsys):
    path = write("x.yaml", "trainer: {experiment_name: rt}\noptim: {betas: [0.8, 0.95]}\n")
    cfg = load(path, ["rollout.stop=[x]"])
    written = save_resolved(cfg, tmp_path / "run", rank=0, header="from x.yaml")
    assert written == tmp_path / "run" / "resolved_config.yaml"
    text = written.read_text()
    assert text.startswith("# from x.yaml\n") and "${" not in text
    assert "resolved config" in capsys.readouterr().out  # rank 0 prints it
    again = load_config(written, check_env=False)
    assert again == cfg
    assert again.optim.betas == (0.8, 0.95)


def test_only_rank_zero_saves(tmp_path, monkeypatch, capsys):
    cfg = load(None)
    monkeypatch.setenv("RANK", "3")
    assert save_resolved(cfg, tmp_path / "r") is None
    assert not (tmp_path / "r").exists() and capsys.readouterr().out == ""


def test_interpolation_to_a_missing_value_reports_the_missing_key(write):
    path = write("x.yaml", "model: {tokenizer_path: '${model.hf_path}'}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["data.train_files=[a]"], check_env=False)
    assert [i.key for i in e.value.issues] == ["model.hf_path"]


@pytest.mark.parametrize(
    "text, key, match",
    [
        ("optim: 3\n", "optim", "this is a section"),
        ("data: {train_files: abc}\n", "data.train_files", "expects a list"),
        ("optim: {betas: [0.9, 0.99, 0.999]}\n", "optim", "length 3"),
    ],
)
def test_structural_mistakes_name_the_key(write, text, key, match):
    path = write("x.yaml", text)
    with pytest.raises(ConfigError, match=match) as e:
        load(path)
    assert e.value.issues[0].key.startswith(key) and e.value.issues[0].source == str(path)
