"""Checks ``hapo-eval`` makes before it starts an engine: the model is something SGLang can serve, and
the token budget (longest prompt + ``--max-new-tokens``) fits the model's context.

Each returns None or a message saying what is wrong, where and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from megatron_hapo.config.model_info import looks_like_hub_id, read_model_shape
from megatron_hapo.eval.benchmarks import Benchmark

_MCORE_MARKERS = ("metadata.json", ".metadata")  # a Megatron distributed (torch_dist) checkpoint
_TRAINER_STATE = "trainer_state.json"  # a trainer checkpoint (step_<N>/)


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
