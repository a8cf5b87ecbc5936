"""The shared tiny-model helper (megatron_hapo/demo/tiny_models.py): loadable, exact vocab, deterministic. Fast."""

import hashlib

import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("tie", [False, True])
def test_loads_with_transformers(tmp_path, family, tie):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_hf_model(tmp_path, family=family, vocab_size=300, tie_word_embeddings=tie, seed=1)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == family and model.config.tie_word_embeddings is tie
    assert len(tok) == model.config.vocab_size == 300  # every id the model can emit decodes
    ids = tok("Solve 12 + 30 = 42.").input_ids
    assert tok.decode(ids) == "Solve 12 + 30 = 42."
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|bos|><|user|>hi<|assistant|>"
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 300) and torch.isfinite(logits).all()
    assert tok.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id


def test_deterministic_per_seed(tmp_path):
    a = _digest(make_tiny_hf_model(tmp_path / "a", family="qwen2", seed=3))
    b = _digest(make_tiny_hf_model(tmp_path / "b", family="qwen2", seed=3))
    c = _digest(make_tiny_hf_model(tmp_path / "c", family="qwen2", seed=4))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        make_tiny_hf_model(tmp_path, vocab_size=100)
    with pytest.raises(ValueError, match="family"):
        make_tiny_hf_model(tmp_path, family="gpt2")
