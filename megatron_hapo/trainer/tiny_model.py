"""The CPU demo's tiny policy: a small Qwen2-family HF model (``megatron_hapo.models.tiny``) with a
tokenizer trained on arithmetic text, optionally warmed up by supervised fine-tuning (SFT) on the bundled
arithmetic prompts so it starts above chance.

Nothing is downloaded. ``make_demo_model(out_dir)`` writes a directory that ``build_gpt_model`` /
``load_hf_weights`` and SGLang both load (config.json, safetensors, tokenizer with a chat template).
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from pathlib import Path

import torch

from megatron_hapo.models.tiny import EOS, PAD, make_tiny_hf_model

logger = logging.getLogger(__name__)

PROMPT = "What is {expr}? Give the result on the last line in the form Answer: $Answer"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _corpus(seed: int) -> list[str]:
    """Tokenizer training text shaped like the demo's prompts and answers."""
    rng = random.Random(seed)
    lines = []
    for _ in range(2000):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice(list(OPS))
        lines.append(PROMPT.format(expr=f"{a} {op} {b}") + f"\nAnswer: {OPS[op](a, b)}")
    return lines


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
    warm_up = None
    if sft_steps > 0:
        warm_up = partial(
            _sft,
            files=sft_files or [],
            steps=sft_steps,
            lr=sft_lr,
            batch=sft_batch,
            seed=seed,
            noise=sft_noise,
        )
    return make_tiny_hf_model(
        out_dir,
        family="qwen2",  # one digit per token
        vocab_size=vocab_size,
        seed=seed,
        hidden_size=hidden_size,
        num_layers=num_layers,
        dtype="float32",
        corpus=_corpus(seed),
        before_save=warm_up,
    )


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
