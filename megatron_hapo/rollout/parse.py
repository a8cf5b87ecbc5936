"""SGLang ``generate`` outputs -> :class:`RolloutSample` (shared by the in-process engine and the fleet)."""

from __future__ import annotations

from typing import Any

from megatron_hapo.rollout.types import RolloutSample

HAPO_TEMPERATURE_KEY = "hapo_temperature"
HAPO_ENTROPY_KEY = "hapo_entropy"


def to_samples(outputs: list[dict[str, Any]], prompts: list[list[int]], n: int) -> list[RolloutSample]:
    """Outputs arrive grouped by prompt: ``outputs[i * n + j]`` is sample j of prompt i."""
    if len(outputs) != len(prompts) * n:
        raise ValueError(
            f"expected {len(prompts) * n} outputs ({len(prompts)} prompts x n={n}), got {len(outputs)}"
        )
    samples = []
    for k, out in enumerate(outputs):
        meta = out["meta_info"]
        response = list(out["output_ids"])
        logprobs = [float(lp) for lp, _tok, *_ in meta["output_token_logprobs"]]
        if len(logprobs) != len(response):
            raise ValueError(f"output {k}: {len(logprobs)} log-probs for {len(response)} tokens")
        samples.append(
            RolloutSample(
                prompt_index=k // n,
                sample_index=k % n,
                prompt_ids=list(prompts[k // n]),
                response_ids=response,
                logprobs=logprobs,
                finish_reason=(meta.get("finish_reason") or {}).get("type", "abort"),
                weight_version=str(meta.get("weight_version")),
                entropies=_per_token(meta, HAPO_ENTROPY_KEY, len(response), k),
                temperatures=_per_token(meta, HAPO_TEMPERATURE_KEY, len(response), k),
            )
        )
    return samples


def _per_token(meta: dict, key: str, length: int, k: int) -> list[float] | None:
    values = meta.get(key)
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) != length:
        raise ValueError(f"output {k}: meta_info[{key!r}] has {len(values)} entries for {length} tokens")
    return values
