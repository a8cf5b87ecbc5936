"""Tiny random Hugging Face models with a locally trained tokenizer: test checkpoints and the CPU demo's policy.

Nothing is downloaded: the weights are random (seeded) and the byte-level BPE tokenizer is trained with
``tokenizers`` on a small deterministic corpus. The directory written by :func:`make_tiny_hf_model` loads
with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and starts an SGLang
``Engine`` on CPU (``attention_backend="torch_native"``).

Usage in a test module (one model per module, it takes well under a second)::

    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    @pytest.fixture(scope="module")
    def tiny_model(tmp_path_factory):
        return make_tiny_hf_model(tmp_path_factory.mktemp("tiny"), family="llama")

Guarantees:

* the tokenizer has exactly ``vocab_size`` entries (BPE tokens, then special tokens, then
  ``<|extra_i|>`` fillers), so every id the model can emit decodes;
* ``bos_token_id``/``eos_token_id``/``pad_token_id`` are consistent between config, generation config
  and tokenizer;
* a minimal chat template is installed (``<|user|>``/``<|assistant|>`` turns), so chat-formatted prompt
  pipelines work;
* the same arguments give bit-identical files.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal, get_args

import torch

Family = Literal["llama", "qwen2", "qwen3", "qwen3_moe"]
FAMILIES = get_args(Family)

# "<|endoftext|>" is the eos under the name Qwen2's tokenizer class expects: transformers always rebuilds a
# qwen2 tokenizer as `Qwen2Tokenizer` (from vocab + merges) and would append that token if it were missing.
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|endoftext|>", "<|user|>", "<|assistant|>")
PAD, BOS, EOS = 0, 1, 2  # ids of the first three special tokens (trained first, see _train_tokenizer)

# Qwen2's pre-tokenizer (one digit per token, letters grouped); Qwen2Tokenizer re-creates exactly this.
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Renders {"role", "content"} messages; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}{% else %}<|assistant|>{{ m['content'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_WORD_TEXT = (
    "the a of to and in is that for it as with on by this be are from at or an which have not "
    "solve find compute answer number sum product prime square root equation value integer triangle "
    "circle area angle probability function derivative limit matrix vector so therefore because if "
    "then let we have get thus hence x y z n k m p q r"
)
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # byte-level alphabet + specials


def _corpus(seed: int, n_lines: int = 3000) -> list[str]:
    """Deterministic pseudo-English with arithmetic, so BPE learns word, digit and operator merges."""
    rng = random.Random(seed)
    words_pool = _WORD_TEXT.split()
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(words_pool) for _ in range(rng.randint(4, 14))]
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        words.insert(rng.randint(0, len(words)), f"{a} + {b} = {a + b}.")
        lines.append(" ".join(words).capitalize())
    return lines


def _train_tokenizer(vocab_size: int, seed: int, family: Family, corpus: list[str] | None = None):
    """Byte-level BPE with exactly ``vocab_size`` entries (fillers top up what BPE could not learn).

    Qwen families get Qwen2's normaliser and pre-tokenizer, so that the ``Qwen2Tokenizer`` transformers
    rebuilds from the saved vocab and merges tokenises exactly like the trained tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if family == "llama":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),  # first, so they get ids 0..4
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else _corpus(seed), trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|extra_{i}|>" for i in range(missing)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} entries, wanted {vocab_size}")
    for i, name in enumerate(SPECIAL_TOKENS[:3]):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    return tok


def _config(
    family: Family,
    vocab_size: int,
    tie_word_embeddings: bool,
    hidden_size: int,
    num_layers: int,
    initializer_range: float,
    dtype: str,
):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA, as in the real families
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        initializer_range=initializer_range,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        dtype=dtype,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)  # qkv bias, like Qwen2/2.5
    if family == "qwen3":
        return Qwen3Config(head_dim=hidden_size // 4, **common)  # q/k RMSNorm, no qkv bias
    if family == "qwen3_moe":  # Qwen3's attention; every layer routes each token to 2 of 8 experts
        return Qwen3MoeConfig(
            head_dim=hidden_size // 4,
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=hidden_size // 2,
            norm_topk_prob=True,  # as Qwen3-30B-A3B and Qwen3-235B-A22B
            **common,
        )
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def make_tiny_hf_model(
    out_dir: str | Path,
    family: Family = "llama",
    vocab_size: int = 512,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    initializer_range: float = 0.02,
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16",
    corpus: list[str] | None = None,
    before_save: Callable | None = None,
) -> Path:
    """Write a random ``family`` causal LM and its tokenizer to ``out_dir``; return ``out_dir`` as a Path.

    ``vocab_size`` must be at least 261 (256 bytes + 5 special tokens). ``initializer_range`` is the std of
    the random weights: the default 0.02 gives nearly uniform next-token distributions (entropy close to
    log V); raise it (e.g. 0.2-0.5) when a test needs peaked, varied distributions. ``dtype`` is the dtype
    the weights are stored in and the ``dtype`` field of config.json. Note that SGLang's ``dtype="auto"``
    serves a float32 checkpoint in bfloat16: pass ``dtype="float32"`` to the engine for fp32 comparisons.
    ``corpus`` replaces the built-in tokenizer training text; ``before_save(model, tokenizer)`` may train
    the random model in place before it is written (the demo's SFT warm-up).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {_MIN_VOCAB} (byte alphabet + specials), got {vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = _train_tokenizer(vocab_size, seed, family, corpus)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[BOS],
        eos_token=SPECIAL_TOKENS[EOS],
        pad_token=SPECIAL_TOKENS[PAD],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    # Pin the class so AutoTokenizer does not map the model type to a slow/vendor tokenizer class.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))

    config = _config(
        family, vocab_size, tie_word_embeddings, hidden_size, num_layers, initializer_range, dtype
    )
    torch_dtype = getattr(torch, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(torch_dtype)
        if before_save is not None:
            before_save(model, hf_tok)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    model.save_pretrained(out)
    _check_reload(out, hf_tok, vocab_size)
    return out


def _check_reload(out: Path, written, vocab_size: int) -> None:
    """AutoTokenizer (what SGLang uses) must give back the tokenizer we trained: same size, same ids."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(out)
    sample = "Solve 12 + 30 = 42. Let x be the root of the equation."
    if len(loaded) != vocab_size or loaded(sample).input_ids != written(sample).input_ids:
        raise RuntimeError(
            f"{out}: AutoTokenizer reloads {type(loaded).__name__} with {len(loaded)} entries (wanted "
            f"{vocab_size}) or different ids; the transformers tokenizer mapping for this family changed"
        )
