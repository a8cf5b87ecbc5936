"""Single-process conversion through the real CLI: TP=1 logits vs HF, bit-exact round trips, vocab padding,
llama3 RoPE scaling, the layer-spec choice, and the CLI's error messages. TP=2 / PP=2 are in
test_conversion_dist.py.
"""

import dataclasses
import json
import re
import shutil

import pytest
import torch

from megatron_hapo.checkpoint_io import load_hf_weights
from megatron_hapo.checkpoint_io.mcore_io import checkpoint_padded_vocab
from megatron_hapo.checkpoint_io.verify import compare_with_hf
from megatron_hapo.cli.convert import main
from megatron_hapo.models import Llama3RopeScaling, build_gpt_model, load_arch
from tests.models.tiny import make_family_model
from tests.parallel_utils import world_of_one

# name -> (family, tie): llama untied with llama3 RoPE, qwen2 tied with qkv bias, qwen3 untied with
# head_dim 24, a tied llama (Llama 3.2 style), and a qwen3_moe (8 experts, 2 per token)
MODELS = {
    "llama": ("llama", None),
    "qwen2": ("qwen2", None),
    "qwen3": ("qwen3", None),
    "llama-tied": ("llama", True),
    "qwen3_moe": ("qwen3_moe", None),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (hf_dir, mcore_dir)}: each tiny HF model converted once by `hf-to-mcore`."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, (family, tie) in MODELS.items():
        hf = make_family_model(root / name, family, tie=tie)
        mcore = root / f"{name}-mcore"
        assert main(["hf-to-mcore", "--hf", str(hf), "--out", str(mcore)]) == 0
        out[name] = (hf, mcore)
    return out


def _cli(capsys, *argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _tensors(directory):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_tp1_logits_match_hf(models, name, capsys):
    hf, mcore = models[name]
    rc, out = _cli(capsys, "verify", "--hf", hf, "--mcore", mcore)
    diff = float(re.search(r"max \|logit diff\| = (\S+)", out).group(1))
    print(f"{name}: TP=1 max |logit diff| {diff:.2e}")
    assert rc == 0 and diff < 1e-4, out


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_hf_mcore_hf_is_bit_exact(models, name, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf, mcore = models[name]
    back = tmp_path / "back"
    shard_size = "40KB" if name == "qwen3" else "5GB"  # qwen3: many shards, to exercise the index
    rc, out = _cli(
        capsys,
        "mcore-to-hf",
        "--mcore",
        mcore,
        "--hf-config",
        hf,
        "--out",
        back,
        "--max-shard-size",
        shard_size,
    )
    assert rc == 0, out
    original, written = _tensors(hf), _tensors(back)
    assert set(written) == set(original)
    for key, tensor in original.items():
        assert torch.equal(written[key], tensor), key
    assert ("lm_head.weight" in written) == (not load_arch(hf).tie_word_embeddings)
    index = json.loads((back / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(written)
    if name == "qwen3":
        assert len(set(index["weight_map"].values())) > 2
    for extra in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        assert (back / extra).read_bytes() == (hf / extra).read_bytes()
    _, info = AutoModelForCausalLM.from_pretrained(back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert len(AutoTokenizer.from_pretrained(back)) == 300


def test_vocab_padded_for_tp_loads_at_tp1(models, tmp_path, capsys):
    """Vocab 300 padded for TP=2 (512 rows, zeros past 300) still loads and verifies at TP=1."""
    hf, tp1 = models["qwen3"]
    assert checkpoint_padded_vocab(tp1) == 384
    padded = tmp_path / "tp2-padded"
    assert _cli(capsys, "hf-to-mcore", "--hf", hf, "--out", padded, "--tp", 2)[0] == 0
    assert checkpoint_padded_vocab(padded) == 512
    rc, out = _cli(capsys, "verify", "--hf", hf, "--mcore", padded)
    assert rc == 0, out
    from megatron.core import dist_checkpointing

    with world_of_one():
        emb = dist_checkpointing.load_plain_tensors(str(padded))["embedding.word_embeddings.weight"]
    assert emb.shape == (512, 64) and not emb[300:].any() and emb[:300].abs().sum() > 0


def test_llama3_rope_scaling_is_applied_with_the_hf_parameters(models):
    """Without scaling, or with Megatron's hard-coded llama3 defaults, the logits are far off."""
    hf, _ = models["llama"]
    arch = load_arch(hf)
    assert arch.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 64)
    diffs = {}
    with world_of_one():
        for label, scaling in [
            ("hf", arch.rope_scaling),
            ("none", None),
            ("megatron-defaults", Llama3RopeScaling(8.0, 1.0, 4.0, 8192)),
        ]:
            model = build_gpt_model(dataclasses.replace(arch, rope_scaling=scaling))
            load_hf_weights(model, hf)
            diffs[label] = compare_with_hf(model, hf).max_abs_diff
    assert diffs["hf"] < 1e-4 and diffs["none"] > 1e-2 and diffs["megatron-defaults"] > 1e-2, diffs


def test_local_spec_on_cpu_and_te_spec_refused(caplog, models):
    import logging

    from megatron_hapo.models import ConversionError
    from megatron_hapo.models.builder import transformer_config

    hf, _ = models["qwen3"]
    with world_of_one():
        with caplog.at_level(logging.INFO, logger="megatron_hapo.models.builder"):
            model = build_gpt_model(hf)
        assert "GPT layer spec: local, unfused attention (no CUDA device)" in caplog.text
        assert type(model.decoder.layers[0].input_layernorm).__name__ == "RMSNorm"
        cfg = transformer_config(load_arch(hf))
        assert (cfg.kv_channels, cfg.num_query_groups, cfg.qk_layernorm, cfg.add_qkv_bias) == (
            24,
            2,
            True,
            False,
        )
        with pytest.raises(ConversionError, match="spec='te' asked for, but no CUDA device"):
            build_gpt_model(hf, spec="te")


def test_verify_fails_with_exit_1_on_the_wrong_weights(models, tmp_path, capsys):
    other = make_family_model(tmp_path / "other", "qwen2", seed=1)
    rc, out = _cli(capsys, "verify", "--hf", other, "--mcore", models["qwen2"][1])
    assert rc == 1 and "FAILED, exceeds tolerance" in out, out


def test_cli_prints_the_layer_spec_to_each_callers_stdout(models, capsys):
    """The CLI's model-log handler lives only as long as the command: a handler kept from an earlier call
    would still write to that call's stdout (here the module fixture's capture, since closed)."""
    import logging

    hf, mcore = models["qwen2"]
    for _ in range(2):
        rc, out = _cli(capsys, "verify", "--hf", hf, "--mcore", mcore)
        assert rc == 0 and "[hapo-convert] GPT layer spec: local" in out, out
    assert logging.getLogger("megatron_hapo.models").handlers == []


def _error(capsys, *argv) -> str:
    rc, out = _cli(capsys, *argv)
    assert rc == 2, out
    assert "Traceback" not in out
    return out


def test_cli_errors_name_the_problem(models, tmp_path, capsys):
    hf, mcore = models["llama"]
    # unsupported architecture
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    )
    assert "model_type 'gpt2'" in _error(capsys, "hf-to-mcore", "--hf", gpt2, "--out", tmp_path / "x")
    # TP not dividing the KV heads (2)
    out = _error(capsys, "hf-to-mcore", "--hf", hf, "--out", tmp_path / "x", "--tp", 4)
    assert "TP=4 does not divide the number of KV heads (2)" in out
    # a config that does not match the checkpoint (qwen3: head_dim 24 and q/k norms vs llama)
    out = _error(
        capsys, "mcore-to-hf", "--mcore", mcore, "--hf-config", models["qwen3"][0], "--out", tmp_path / "y"
    )
    assert "does not match the model built from the HF config" in out and "q_layernorm" in out
    # tied config vs untied checkpoint
    out = _error(capsys, "verify", "--hf", models["llama-tied"][0], "--mcore", mcore)
    assert "untied output_layer.weight" in out
    # verify at TP=2 needs two processes
    assert "needs 2 processes" in _error(capsys, "verify", "--hf", hf, "--mcore", mcore, "--tp", 2)
    # a non-empty output directory
    assert "is not empty" in _error(capsys, "hf-to-mcore", "--hf", hf, "--out", mcore)


def test_missing_shards_are_reported(models, tmp_path, capsys):
    hf, mcore = models["qwen2"]
    sharded = tmp_path / "sharded"
    assert (
        _cli(
            capsys,
            "mcore-to-hf",
            "--mcore",
            mcore,
            "--hf-config",
            hf,
            "--out",
            sharded,
            "--max-shard-size",
            "40KB",
        )[0]
        == 0
    )
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    out = _error(capsys, "hf-to-mcore", "--hf", sharded, "--out", tmp_path / "x")
    assert victim.name in out and "missing" in out
    broken = tmp_path / "broken-mcore"
    shutil.copytree(mcore, broken)
    for f in broken.glob("*.distcp"):
        f.unlink()
    out = _error(capsys, "verify", "--hf", hf, "--mcore", broken)
    assert "checkpoint shard file(s)" in out and ".distcp" in out


def test_bf16_checkpoint_keeps_its_dtype_and_round_trips_exactly(tmp_path, capsys):
    """Real checkpoints are bf16: `--dtype auto` keeps bf16 end to end, and verify (fp32 compute) passes."""
    from megatron_hapo.checkpoint_io.mcore_io import checkpoint_dtype
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    hf = make_tiny_hf_model(
        tmp_path / "bf16", family="qwen2", vocab_size=300, initializer_range=0.3, dtype="bfloat16"
    )
    mcore, back = tmp_path / "bf16-mcore", tmp_path / "bf16-back"
    assert _cli(capsys, "hf-to-mcore", "--hf", hf, "--out", mcore)[0] == 0
    assert checkpoint_dtype(mcore) == torch.bfloat16
    rc, out = _cli(capsys, "verify", "--hf", hf, "--mcore", mcore)
    assert rc == 0, out
    assert _cli(capsys, "mcore-to-hf", "--mcore", mcore, "--hf-config", hf, "--out", back)[0] == 0
    original, written = _tensors(hf), _tensors(back)
    assert set(written) == set(original)
    assert all(written[k].dtype == torch.bfloat16 and torch.equal(written[k], original[k]) for k in original)
    assert json.loads((back / "config.json").read_text())["dtype"] == "bfloat16"
