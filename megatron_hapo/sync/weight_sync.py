"""Push the policy's weights into the rollout engine after every step."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from megatron_hapo.rollout.types import RolloutEngine
from megatron_hapo.sync.buckets import iter_buckets, tensor_bytes
from megatron_hapo.sync.transports import Transport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    version: str
    seconds: float
    bytes: int
    tensors: int
    buckets: int

    @property
    def gb_per_s(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e9


class WeightSyncError(RuntimeError):
    pass


def push_weights(
    engine: RolloutEngine,
    transport: Transport,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    version: str,
    bucket_bytes: int = 512 << 20,
    verify_name: str | None = None,
) -> SyncReport:
    """One weight update: pause -> flush -> begin -> buckets -> end -> version -> resume.

    ``named_tensors`` is a stream of HF-named tensors (``export_hf_weights(model)``). The engine is
    resumed even when the update fails, and the error names the failing step. With ``verify_name``,
    that parameter is read back from the engine afterwards and must equal what was sent (within the
    engine's dtype): a sync that silently changed nothing fails loudly. (Read-back needs the SGLang
    model class to implement ``get_weights_by_name``: Llama does, Qwen2 does not in 0.5.23.)
    """
    start = time.perf_counter()
    total = count = nbuckets = 0
    sent_probe = None
    engine.pause()
    try:
        engine.flush_cache()
        engine.begin_weight_update()
        for bucket in iter_buckets(named_tensors, bucket_bytes):
            for name, tensor in bucket:
                total += tensor_bytes(tensor)
                if name == verify_name:
                    sent_probe = tensor.detach().float().cpu().clone()
            count += len(bucket)
            nbuckets += 1
            transport.send(bucket)
        if count == 0:
            raise WeightSyncError("weight sync received no tensors from the exporter")
        transport.finish()
        engine.end_weight_update()
        engine.set_weight_version(version)
    finally:
        engine.resume()
    report = SyncReport(version, time.perf_counter() - start, total, count, nbuckets)
    if verify_name is not None:
        _verify(engine, verify_name, sent_probe)
    logger.info(
        "weight sync %s via %s: %d tensors, %.1f MB in %d buckets, %.2f s (%.2f GB/s)",
        version, transport.name, count, total / 1e6, nbuckets, report.seconds, report.gb_per_s,
    )  # fmt: skip
    return report


def _verify(engine, name: str, sent: torch.Tensor | None) -> None:
    if sent is None:
        raise WeightSyncError(f"verify_name {name!r} was not among the synced tensors")
    got = engine.get_weight(name).float()
    if got.shape != sent.shape:
        raise WeightSyncError(
            f"after sync, engine {name} has shape {tuple(got.shape)}, sent {tuple(sent.shape)}"
        )
    # the engine may store bf16: compare at that precision
    err = (got - sent).abs().max().item()
    tol = 1e-2 * sent.abs().max().item() + 1e-6
    if err > tol:
        raise WeightSyncError(
            f"after sync, engine {name} differs from what was sent by {err:.3g} (tolerance {tol:.3g})"
        )
