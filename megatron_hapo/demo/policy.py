"""The CPU demo's policy: a small Qwen2-family HF model (``megatron_hapo.demo.tiny_models``) with a tokenizer
trained on the task's text, warmed up by supervised fine-tuning (SFT) so that it starts above chance.

Two tasks:

- ``"reasoning"`` (``make demo``): multi-step sums with a scratchpad (``megatron_hapo.demo.task``); the SFT
  targets are imperfect scratchpads (``megatron_hapo.demo.traces``: skipped steps, arithmetic errors,
  missing answer lines), so the warm policy is right sometimes and RL has something to fix;
- ``"tiny_math"`` (the short end-to-end tests): single-digit ``a op b`` prompts; the SFT target is
  ``Answer: N``, written as the bare number for a share ``sft_noise`` of the examples.

Nothing is downloaded. ``make_demo_model(out_dir)`` writes a directory that ``build_gpt_model`` /
``load_hf_weights`` and SGLang both load (config.json, safetensors, tokenizer with a chat template), plus
``demo_recipe.json`` (the arguments): a second call with the same arguments reuses the directory (the
warm-up is cached).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from functools import partial
from pathlib import Path

import torch

from megatron_hapo.demo import task as reasoning
from megatron_hapo.demo.tiny_models import EOS, PAD, make_tiny_hf_model
from megatron_hapo.demo.traces import TraceNoise, noisy_solution

logger = logging.getLogger(__name__)

TASKS = ("tiny_math", "reasoning")
RECIPE_FILE = "demo_recipe.json"
PROMPT = "What is {expr}? Give the result on the last line in the form Answer: $Answer"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _tiny_math_corpus(seed: int) -> list[str]:
    """Tokenizer training text shaped like the tiny-math prompts and answers."""
    rng = random.Random(seed)
    lines = []
    for _ in range(2000):
        a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice(list(OPS))
        lines.append(PROMPT.format(expr=f"{a} {op} {b}") + f"\nAnswer: {OPS[op](a, b)}")
    return lines


def _reasoning_corpus(seed: int) -> list[str]:
    """Tokenizer training text: reasoning prompts and reference scratchpads (digits are single tokens
    under Qwen2's pre-tokenizer whatever the corpus, so only the words and symbols matter here)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(1000):
        terms = [rng.randint(*reasoning.TERM_RANGE) for _ in range(rng.choice(reasoning.LEVELS))]
        prompt = reasoning.PROMPT.format(expr=reasoning.expression(terms))
        lines.append(prompt + "\n" + reasoning.reference_solution(terms))
    return lines


def make_demo_model(
    out_dir: str | Path,
    *,
    task: str = "tiny_math",
    vocab_size: int = 320,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
    sft_steps: int = 0,
    sft_files: list[str] | None = None,
    sft_lr: float = 3e-3,
    sft_batch: int = 64,
    sft_noise: float = 0.0,
    trace_noise: TraceNoise | None = None,
    sft_cosine: bool = False,
    sft_warmup: int = 0,
    sft_clip: float = 0.0,
) -> Path:
    """Write a small random Qwen2 model (fp32) + tokenizer to ``out_dir``; with ``sft_steps`` > 0, first
    fine-tune it on the prompts of ``sft_files`` (next-token cross-entropy on the completion only).

    ``task="tiny_math"``: the completion is ``Answer: N``, or the bare number for a share ``sft_noise``
    (the DAPO scorer then finds no answer line). ``task="reasoning"``: the completion is the scratchpad of
    ``megatron_hapo.demo.traces.noisy_solution`` with ``trace_noise``. ``sft_cosine`` decays the learning
    rate to 10 % over the steps (a cleaner end point for longer warm-ups); ``sft_warmup`` ramps it up
    linearly over that many first steps and ``sft_clip`` > 0 clips the gradient norm to it.

    When ``out_dir`` already holds a model written with the same arguments, it is returned as is."""
    if task not in TASKS:
        raise ValueError(f"make_demo_model: task must be one of {TASKS}, got {task!r}")
    if task == "reasoning" and sft_noise:
        raise ValueError(
            "make_demo_model: sft_noise is the tiny_math noise; pass trace_noise for 'reasoning'"
        )
    out = Path(out_dir)
    recipe = {
        "task": task, "vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers,
        "seed": seed, "sft_steps": sft_steps, "sft_files": [str(f) for f in sft_files or []],
        "sft_lr": sft_lr, "sft_batch": sft_batch, "sft_noise": sft_noise, "sft_cosine": sft_cosine,
        "trace_noise": vars(trace_noise or TraceNoise()),
    }  # fmt: skip
    if sft_warmup or sft_clip:  # only when used, so that older recipes keep their cached models
        recipe.update(sft_warmup=sft_warmup, sft_clip=sft_clip)
    recipe_path = out / RECIPE_FILE
    cached = (out / "model.safetensors").is_file() and recipe_path.is_file()
    if cached and json.loads(recipe_path.read_text()) == recipe:
        logger.info("reusing the warmed-up demo model in %s", out)
        return out
    warm_up = None
    if sft_steps > 0:
        if not sft_files:
            raise ValueError("make_demo_model: sft_steps > 0 needs sft_files (prompt files of the task)")
        make_completion = (
            partial(_reasoning_completion, noise=trace_noise or TraceNoise())
            if task == "reasoning"
            else partial(_tiny_math_completion, noise=sft_noise)
        )
        warm_up = partial(
            _sft,
            files=sft_files,
            steps=sft_steps,
            lr=sft_lr,
            batch=sft_batch,
            seed=seed,
            make_completion=make_completion,
            cosine=sft_cosine,
            warmup=sft_warmup,
            clip=sft_clip,
        )
    corpus = _reasoning_corpus(seed) if task == "reasoning" else _tiny_math_corpus(seed)
    make_tiny_hf_model(
        out,
        family="qwen2",  # one digit per token
        vocab_size=vocab_size,
        seed=seed,
        hidden_size=hidden_size,
        num_layers=num_layers,
        dtype="float32",
        corpus=corpus,
        before_save=warm_up,
    )
    recipe_path.write_text(json.dumps(recipe, indent=2) + "\n")
    return out


def _tiny_math_completion(record: dict, rng: random.Random, noise: float) -> str:
    answer = str(record["reward_model"]["ground_truth"])
    return answer if rng.random() < noise else f"Answer: {answer}"


def _reasoning_completion(record: dict, rng: random.Random, noise: TraceNoise) -> str:
    terms = (record.get("extra_info") or {}).get("terms")
    if not terms:
        raise ValueError(
            f"SFT warm-up (task 'reasoning'): row {record.get('extra_info')} has no extra_info.terms; "
            "use the files of python -m megatron_hapo.demo.task"
        )
    return noisy_solution(list(terms), noise, rng)


def _sft_examples(tokenizer, files: list[str]) -> list[tuple[list[int], dict]]:
    from megatron_hapo.data import iter_records

    examples = []
    for path in files:
        for _row, record, _err in iter_records(path):
            if record is None:
                continue
            prompt = tokenizer.apply_chat_template(
                record["prompt"], add_generation_prompt=True, tokenize=False
            )
            examples.append((tokenizer(prompt, add_special_tokens=False).input_ids, record))
    if not examples:
        raise ValueError(f"SFT warm-up: no rows in {files}")
    return examples


def _sft(
    model, tokenizer, files, steps, lr, batch, seed, make_completion, cosine, warmup=0, clip=0.0
) -> None:
    """Next-token cross-entropy on the completions only (prompt tokens masked)."""
    examples = _sft_examples(tokenizer, files)
    rng = random.Random(seed)

    def completion(record: dict) -> list[int]:
        return tokenizer(make_completion(record, rng), add_special_tokens=False).input_ids + [EOS]

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    start, loss = time.perf_counter(), float("nan")
    for step in range(steps):
        # cosine: lr * (0.1 + 0.9 * (1 + cos(pi * step / steps)) / 2); warmup: times (step + 1) / warmup
        scale = 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)) if cosine else 1.0
        if warmup:
            scale *= min(1.0, (step + 1) / warmup)
        for group in opt.param_groups:
            group["lr"] = lr * scale
        chosen = [
            (p, completion(r)) for p, r in (examples[rng.randrange(len(examples))] for _ in range(batch))
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
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss = float(out.loss.detach())
        if (step + 1) % 50 == 0:
            logger.info(
                "SFT step %d/%d: loss %.3f, %.0f s", step + 1, steps, loss, time.perf_counter() - start
            )
    model.eval()
    logger.info("SFT warm-up: %d steps, final loss %.3f, %.1f s", steps, loss, time.perf_counter() - start)
