"""hapo-eval checks before any engine starts (issue 17, bug 9): the token budget against the model's
context, a Megatron checkpoint passed as --model (was a sentencepiece error from the tokenizer), and
--server-arg against SGLang's fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_hapo.cli import eval as eval_cli
from megatron_hapo.demo.tiny_models import make_tiny_hf_model

VAL = Path(__file__).resolve().parents[2] / "examples" / "data" / "tiny_math_val.parquet"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_hf_model(tmp_path_factory.mktemp("tiny"), family="qwen2")


@pytest.fixture
def no_engine(monkeypatch):
    monkeypatch.setattr(eval_cli, "build_engine", lambda args: pytest.fail("engine started"))


def _context(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]


def test_a_budget_over_the_context_fails_before_the_engine(model_dir, no_engine, capsys, tmp_path):
    ctx = _context(model_dir)
    argv = ["--model", str(model_dir), "--benchmarks", str(VAL), "--max-new-tokens", str(ctx),
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hapo-eval: the longest prompt (") and f"max_position_embeddings={ctx}" in err
    assert "benchmark 'tiny_math_val'" in err and "tiny_math_val.parquet row " in err
    longest = int(err.split("the longest prompt (")[1].split()[0])
    assert f"lower --max-new-tokens to at most {ctx - longest}" in err


@pytest.mark.parametrize("layout", ["mcore", "trainer_with_hf", "empty"])
def test_a_megatron_checkpoint_is_named_not_a_tokenizer_error(tmp_path, model_dir, no_engine, capsys, layout):
    ckpt = tmp_path / "step_4"
    ckpt.mkdir()
    if layout in ("mcore", "trainer_with_hf"):
        (ckpt / "metadata.json").write_text("{}")
        (ckpt / ".metadata").write_bytes(b"")
        (ckpt / "trainer_state.json").write_text("{}")
    if layout == "trainer_with_hf":
        (ckpt / "hf").mkdir()
        (ckpt / "hf" / "config.json").write_text((model_dir / "config.json").read_text())
    assert eval_cli.main(["--model", str(ckpt), "--benchmarks", str(VAL)]) == 2
    err = capsys.readouterr().err
    expected = {
        "mcore": "is a Megatron checkpoint, which SGLang cannot serve; convert it first: hapo-convert mcore-to-hf",
        "trainer_with_hf": f"the trainer exported it as an HF checkpoint too: pass --model {ckpt / 'hf'}",
        "empty": "has no config.json; pass an HF checkpoint directory",
    }[layout]
    assert (
        err.startswith(f"hapo-eval: --model {ckpt}")
        and expected in err
        and "sentencepiece" not in err.lower()
    )


def test_several_models_must_share_architecture_and_tokenizer(tmp_path, model_dir, no_engine, capsys):
    """Several --model are loaded one after another into one engine, and the prompts tokenized once: another
    architecture or tokenizer is refused before anything starts, naming the model and what differs."""
    import shutil

    from megatron_hapo.eval.preflight import shared_engine_problem

    same = shutil.copytree(model_dir, tmp_path / "same")
    config = json.loads((same / "config.json").read_text())
    (same / "config.json").write_text(json.dumps(dict(config, torch_dtype="float32", _name_or_path="x")))
    assert shared_engine_problem([str(model_dir), str(same)]) is None  # who saved it, in which dtype: alike
    wider = shutil.copytree(model_dir, tmp_path / "wider")
    (wider / "config.json").write_text(json.dumps(dict(config, intermediate_size=999)))
    retokenized = shutil.copytree(model_dir, tmp_path / "retokenized")
    (retokenized / "tokenizer.json").write_text("{}")
    cases = {
        wider: f"--model {wider} differs from {model_dir} in config.json (intermediate_size)",
        retokenized: f"--model {retokenized} has another tokenizer than {model_dir} (tokenizer.json differ)",
        "Qwen/Qwen2.5-0.5B": "--model Qwen/Qwen2.5-0.5B: with several models each must be a local HF checkpoint",
    }
    for other, message in cases.items():
        assert eval_cli.main(["--model", str(model_dir), str(other), "--benchmarks", str(VAL)]) == 2
        assert message in capsys.readouterr().err


def test_server_args_are_checked_against_sglangs_fields_before_the_engine(
    model_dir, no_engine, capsys, tmp_path
):
    argv = ["--model", str(model_dir), "--benchmarks", str(VAL), "--run-dir", str(tmp_path / "run"),
            "--server-arg", "chunked_prefil_size=64", "--server-arg", "tp_size=2",
            "--server-arg", "cuda_graph_bs_decode=[1, x]"]  # fmt: skip
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "--server-arg chunked_prefil_size is not an SGLang server argument (did you mean chunked_prefill_size"
        in err
    )
    assert "--server-arg tp_size is set by this project from --tp" in err
    assert "--server-arg cuda_graph_bs_decode [1, 'x'] is not a valid value" in err
    assert eval_cli.main([*argv[:6], "--server-arg", "ep_size"]) == 2
    assert "give FIELD=VALUE" in capsys.readouterr().err
    assert eval_cli.parse_server_args(["chunked_prefill_size=64", "cuda_graph_bs_decode=[1, 2]"]) == {
        "chunked_prefill_size": 64,
        "cuda_graph_bs_decode": [1, 2],
    }


def test_a_run_directory_of_another_evaluation_is_refused_before_the_engine(
    tmp_path, model_dir, monkeypatch, capsys
):
    """A rerun on the same --run-dir resumes each model's answer journal; one written by another evaluation
    (other settings, or another model written at the same path) is refused before the engine starts, whichever
    model it belongs to, naming the journal and what differs."""
    import os
    import shutil

    second = shutil.copytree(model_dir, tmp_path / "second", copy_function=shutil.copy2)
    run_dir = tmp_path / "run"
    argv = ["--model", str(model_dir), str(second), "--benchmarks", str(VAL), "--run-dir", str(run_dir),
            "--scorer-workers", "0", "--max-new-tokens", "64"]  # fmt: skip

    def engine_starts(args):
        raise RuntimeError("the engine starts")

    monkeypatch.setattr(eval_cli, "build_engine", engine_starts)
    with pytest.raises(RuntimeError, match="the engine starts"):
        eval_cli.main(argv)  # both journals are open (empty) when the engine starts
    journals = sorted((run_dir / "answers").iterdir())
    assert [p.name for p in journals] == ["model0.jsonl", "model1.jsonl"]
    for journal in journals:  # a first batch answered (an empty journal is any evaluation's to take over)
        line = {"benchmark": "tiny_math_val", "prompt": 0, "version": "v1", "outcomes": [[True, 3, "stop"]],
                "records": None}  # fmt: skip
        with open(journal, "a") as f:
            f.write(json.dumps(line) + "\n")

    monkeypatch.setattr(eval_cli, "build_engine", lambda args: pytest.fail("engine started"))
    assert eval_cli.main([*argv, "--temperature", "0.6"]) == 2
    err = capsys.readouterr().err
    assert f"hapo-eval: {run_dir / 'answers' / 'model0.jsonl'} holds the answers of another evaluation" in err
    assert "temperature 0.5 there, 0.6 here" in err

    weights = next(second.glob("*.safetensors"))  # the second model exported anew into its directory
    mtime = weights.stat().st_mtime_ns
    weights.write_bytes(weights.read_bytes())
    os.utime(weights, ns=(mtime, mtime + 10**9))
    assert eval_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        f"{run_dir / 'answers' / 'model1.jsonl'} holds the answers of another evaluation (the model's files:"
        in err
    )
