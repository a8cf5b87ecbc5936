"""SGLang ``generate`` outputs -> :class:`RolloutSample` (shared by the in-process engine and the fleet)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from megatron_hapo.rollout.sampler_wire import decode_outputs
from megatron_hapo.rollout.types import EngineError, RolloutSample


def to_samples(
    outputs: list[dict[str, Any]],
    prompts: list[list[int]],
    n: int,
    require_hapo: bool = False,
    routed_experts: bool = False,
) -> list[RolloutSample]:
    """Outputs arrive grouped by prompt: ``outputs[i * n + j]`` is sample j of prompt i.

    With ``require_hapo`` (the engine was started with the HAPO sampler), every output must carry the
    per-token ``hapo_temperature``/``hapo_entropy``: a server running the stock sampler fails loudly
    instead of silently sampling at the base temperature. With ``routed_experts``
    (``GenerationParams.return_routed_experts``), every output must carry SGLang's ``routed_experts``
    (:func:`decode_routed_experts`).
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
                routed_experts=(
                    decode_routed_experts(meta, len(prompts[k // n]) + len(response), k)
                    if routed_experts
                    else None
                ),
            )
        )
    return samples


def decode_routed_experts(meta: dict[str, Any], seq_len: int, k: int) -> np.ndarray:
    """SGLang's ``meta_info["routed_experts"]`` of a ``seq_len``-token sequence (prompt + response) as
    ``[seq_len - 1, MoE layers x top_k]`` expert ids, in the smallest integer type that holds them.

    SGLang records the experts of every token it ran through the model: each prompt token and each response
    token but the last (it is never fed back), as base64 of int32 ``[seq_len - 1, layers, top_k]``
    (``sglang.srt.state_capturer.routed_experts``)."""
    encoded = meta.get("routed_experts")
    if not encoded:
        raise EngineError(
            f"output {k}: routed experts were requested (algorithm.rollout_routing_replay) but the server "
            "returned none: start every SGLang server with --enable-return-routed-experts (servers the "
            "trainer launches get it), or set algorithm.rollout_routing_replay=false"
        )
    ids = np.frombuffer(base64.b64decode(encoded), dtype=np.int32)
    rows = seq_len - 1
    if rows < 1 or ids.size % rows or ids.size == 0:
        raise EngineError(
            f"output {k}: {ids.size} routed expert ids do not split into the {rows} tokens SGLang ran "
            f"of a {seq_len}-token sequence"
        )
    ids = ids.reshape(rows, -1)
    return ids.astype(np.uint8 if ids.max() < 256 else np.int16)
