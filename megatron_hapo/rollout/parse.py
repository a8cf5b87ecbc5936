"""SGLang ``generate`` outputs -> :class:`RolloutSample` (shared by the in-process engine and the fleet)."""

from __future__ import annotations

from typing import Any

from megatron_hapo.rollout.sampler_wire import decode_outputs
from megatron_hapo.rollout.types import RolloutSample


def to_samples(
    outputs: list[dict[str, Any]], prompts: list[list[int]], n: int, require_hapo: bool = False
) -> list[RolloutSample]:
    """Outputs arrive grouped by prompt: ``outputs[i * n + j]`` is sample j of prompt i.

    With ``require_hapo`` (the engine was started with the HAPO sampler), every output must carry the
    per-token ``hapo_temperature``/``hapo_entropy``: a server running the stock sampler fails loudly
    instead of silently sampling at the base temperature.
    """
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
        temperatures = entropies = None
        if require_hapo:
            temperatures, entropies = decode_outputs(meta)
        samples.append(
            RolloutSample(
                prompt_index=k // n,
                sample_index=k % n,
                prompt_ids=list(prompts[k // n]),
                response_ids=response,
                logprobs=logprobs,
                finish_reason=(meta.get("finish_reason") or {}).get("type", "abort"),
                weight_version=str(meta.get("weight_version")),
                entropies=entropies,
                temperatures=temperatures,
            )
        )
    return samples
