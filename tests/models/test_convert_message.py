"""hapo-convert says which layouts a converted checkpoint loads at (issue 17, bug 9): the TP sizes the
heads allow, not "any TP dividing 384" (the padded vocabulary)."""

from __future__ import annotations

from megatron_hapo.cli.convert import loadable_layouts
from megatron_hapo.models import load_arch
from megatron_hapo.models.known_configs import known_config

TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 320,
}  # fmt: skip  (the CPU demo's model)


def test_the_tiny_models_heads_allow_tp_1_or_2():
    arch = load_arch({**known_config("Qwen2.5-Math-1.5B"), **TINY})
    padded = arch.padded_vocab_size(1, 128)
    message = loadable_layouts(arch, padded)
    assert padded == 384 and message.startswith("it loads at TP 1 or 2 (") and "padded vocab 384)" in message
    assert "PP 1 or 2 (" in message and "dividing" not in message


def test_a_real_model():
    arch = load_arch(known_config("Qwen2.5-Math-7B"))  # 28 heads, 4 KV heads, 28 layers
    message = loadable_layouts(arch, arch.padded_vocab_size(4, 128))
    assert "TP 1, 2 or 4 (" in message and "PP 1, 2, 4, 7, 14 or 28 (" in message
