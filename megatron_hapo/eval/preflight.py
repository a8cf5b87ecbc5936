"""Checks ``hapo-eval`` makes before it starts an engine: the model is something SGLang can serve, several
models can share one engine, and the token budget (longest prompt + ``--max-new-tokens``) fits the model's
context.

Each returns None or a message saying what is wrong, where and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from megatron_hapo.config.model_info import looks_like_hub_id, read_model_shape
from megatron_hapo.eval.benchmarks import Benchmark

_MCORE_MARKERS = ("metadata.json", ".metadata")  # a Megatron distributed (torch_dist) checkpoint
_TRAINER_STATE = "trainer_state.json"  # a trainer checkpoint (step_<N>/)
# config.json keys that differ between checkpoints of one architecture (who saved it, in which dtype)
_NOT_ARCHITECTURE = frozenset({"_name_or_path", "torch_dtype", "dtype", "transformers_version"})
# the files of a tokenizer: the prompts are tokenized once, with the first model's
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")  # fmt: skip


def model_problem(model: str) -> str | None:
    """Why ``--model`` cannot be served as an HF checkpoint (None = it can, or it is a hub id)."""
    path = Path(model).expanduser()
    if not path.exists():
        return None if looks_like_hub_id(model) else f"--model {model}: directory not found"
    if not path.is_dir():
        return f"--model {model} is a file; pass an HF checkpoint directory (config.json, weights, tokenizer)"
    if (path / "config.json").is_file():
        return None
    if all((path / m).exists() for m in _MCORE_MARKERS) or (path / _TRAINER_STATE).is_file():
        if (path / "hf" / "config.json").is_file():
            return (
                f"--model {model} is a Megatron checkpoint, which SGLang cannot serve; the trainer exported it "
                f"as an HF checkpoint too: pass --model {path / 'hf'}"
            )
        return (
            f"--model {model} is a Megatron checkpoint, which SGLang cannot serve; convert it first: "
            f"hapo-convert mcore-to-hf --mcore {model} --hf-config <the run's model.hf_path> --out DIR, then "
            "pass --model DIR (or train with checkpoint.hf_export=true to get step_<N>/hf)"
        )
    return f"--model {model} has no config.json; pass an HF checkpoint directory (config.json, weights, tokenizer)"


def shared_engine_problem(models: Sequence[str]) -> str | None:
    """Why several ``--model`` cannot be evaluated one after another on one engine, each loaded from disk into
    it (None = they can): each must be a local HF directory, their config.json files must agree on all but
    who saved them and in which dtype, and their tokenizer files must be the same."""
    if len(models) < 2:
        return None
    configs = {}
    for model in models:
        config_json = Path(model).expanduser() / "config.json"
        if not config_json.is_file():
            return (
                f"--model {model}: with several models each must be a local HF checkpoint directory (they are "
                "loaded from disk into one engine)"
            )
        raw = json.loads(config_json.read_text())
        configs[model] = {k: v for k, v in raw.items() if k not in _NOT_ARCHITECTURE}
    first, *others = models
    for model in others:
        keys = configs[first].keys() | configs[model].keys()
        differ = sorted(k for k in keys if configs[first].get(k) != configs[model].get(k))
        if differ:
            return (
                f"--model {model} differs from {first} in config.json ({', '.join(differ[:6])}): one engine "
                "serves one architecture; evaluate them in separate hapo-eval runs"
            )
        differ = [f for f in _TOKENIZER_FILES if _read(Path(first) / f) != _read(Path(model) / f)]
        if differ:
            return (
                f"--model {model} has another tokenizer than {first} ({', '.join(differ)} differ): the prompts "
                "are tokenized once, with the first model's; evaluate them in separate hapo-eval runs"
            )
    return None


def _read(path: Path) -> bytes | None:
    return path.expanduser().read_bytes() if path.expanduser().is_file() else None


def budget_problem(model: str, benchmarks: Sequence[Benchmark], max_new_tokens: int) -> str | None:
    """Why the longest prompt + ``max_new_tokens`` cannot fit the context of ``model`` (None = it fits, or
    the context is not known locally). Context = ``max_position_embeddings`` of its config.json."""
    config_json = Path(model).expanduser() / "config.json"
    if not config_json.is_file():
        return None
    context = read_model_shape(config_json, {}).max_position_embeddings
    prompts = [(len(p.prompt_ids), b.name, p.source) for b in benchmarks for p in b.prompts]
    if context is None or not prompts:
        return None
    longest, name, source = max(prompts)
    if longest + max_new_tokens <= context:
        return None
    return (
        f"the longest prompt ({longest} tokens, benchmark {name!r}, {source}) + --max-new-tokens "
        f"{max_new_tokens} = {longest + max_new_tokens} tokens exceed the model's context "
        f"(max_position_embeddings={context} in {config_json}); lower --max-new-tokens to at most "
        f"{max(context - longest, 0)}, or --max-prompt-length with --truncation left/drop"
    )
