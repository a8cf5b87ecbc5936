"""The CPU demo's tiny policy: a small Qwen2-family HF model with a locally trained tokenizer, optionally
warmed up by supervised fine-tuning (SFT) on the bundled arithmetic prompts so it starts above chance.

Nothing is downloaded. ``make_demo_model(out_dir)`` writes a directory that ``build_gpt_model`` /
``load_hf_weights`` and SGLang both load (config.json, safetensors, tokenizer with a chat template).
The builder mirrors ``tests/fixtures_tiny_model.py`` (a test-only module the package must not import),
reduced to what the demo needs: one family (qwen2: one digit per token), fp32 weights.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|endoftext|>", "<|user|>", "<|assistant|>")
PAD, BOS, EOS = 0, 1, 2
# Qwen2's pre-tokenizer: one digit per token, letters grouped (Qwen2Tokenizer rebuilds exactly this)
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}{% else %}<|assistant|>{{ m['content'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROMPT = "What is {expr}? Give the result on the last line in the form Answer: $Answer"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(2000):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice(list(OPS))
        lines.append(PROMPT.format(expr=f"{a} {op} {b}") + f"\nAnswer: {OPS[op](a, b)}")
    return lines


def _tokenizer(vocab_size: int, seed: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
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
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|extra_{i}|>" for i in range(missing)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"tokenizer has {tok.get_vocab_size()} entries, wanted {vocab_size}")
    return tok


def make_demo_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    sft_steps: int = 0,
    sft_files: list[str] | None = None,
    sft_lr: float = 3e-3,
    sft_batch: int = 64,
    sft_noise: float = 0.0,
) -> Path:
    """Write a tiny random Qwen2 model (fp32) + tokenizer to ``out_dir``; with ``sft_steps`` > 0, first
    fine-tune it on the prompts of ``sft_files`` (ground-truth answers as "Answer: N" completions).

    ``sft_noise``: the share of SFT completions written as the bare number, without the "Answer:" line the
    DAPO scorer requires. The warm policy then often answers in the wrong format: RL has a clear, shared
    signal to learn (the demo's reward rises within a few dozen steps), on top of sharpening the answers."""
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(vocab_size, seed),
        bos_token=SPECIAL_TOKENS[BOS],
        eos_token=SPECIAL_TOKENS[EOS],
        pad_token=SPECIAL_TOKENS[PAD],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).float()
        if sft_steps > 0:
            _sft(model, hf_tok, sft_files or [], sft_steps, sft_lr, sft_batch, seed, sft_noise)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    model.save_pretrained(out)
    return out


def _sft_examples(tokenizer, files: list[str]) -> list[tuple[list[int], str]]:
    from megatron_hapo.data import iter_records

    examples = []
    for path in files:
        for _row, record, _err in iter_records(path):
            if record is None:
                continue
            prompt = tokenizer.apply_chat_template(
                record["prompt"], add_generation_prompt=True, tokenize=False
            )
            p = tokenizer(prompt, add_special_tokens=False).input_ids
            examples.append((p, str(record["reward_model"]["ground_truth"])))
    if not examples:
        raise ValueError(f"SFT warm-up: no rows in {files}")
    return examples


def _sft(model, tokenizer, files, steps, lr, batch, seed, noise) -> None:
    """Next-token cross-entropy on the answers only (prompt tokens masked)."""
    examples = _sft_examples(tokenizer, files)
    rng = random.Random(seed)

    def completion(answer: str) -> list[int]:
        text = answer if rng.random() < noise else f"Answer: {answer}"
        return tokenizer(text, add_special_tokens=False).input_ids + [EOS]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    start, loss = time.perf_counter(), float("nan")
    for _ in range(steps):
        chosen = [
            (p, completion(a)) for p, a in (examples[rng.randrange(len(examples))] for _ in range(batch))
        ]
        seq = max(len(p) + len(a) for p, a in chosen)
        ids = torch.full((batch, seq), PAD, dtype=torch.long)
        labels = torch.full((batch, seq), -100, dtype=torch.long)
        attn = torch.zeros(batch, seq, dtype=torch.long)
        for i, (p, a) in enumerate(chosen):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p) : len(p) + len(a)] = torch.tensor(a)
            attn[i, : len(p) + len(a)] = 1
        out = model(input_ids=ids, attention_mask=attn, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        loss = float(out.loss.detach())
    model.eval()
    logger.info("SFT warm-up: %d steps, final loss %.3f, %.1f s", steps, loss, time.perf_counter() - start)
