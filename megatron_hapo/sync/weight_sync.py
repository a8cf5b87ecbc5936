"""What a weight sync reports, how it fails, and its read-back check (used by ``sync/synchronizer.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_hapo.rollout.types import RolloutEngine


@dataclass(frozen=True)
class SyncReport:
    version: str
    seconds: float
    bytes: int
    tensors: int
    buckets: int
    probe: torch.Tensor | None = field(default=None, repr=False)  # the verified tensor as sent

    @property
    def gb_per_s(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / 1e9

    def metrics(self) -> dict[str, float]:
        return {"time/sync_s": self.seconds, "sync/mb": self.bytes / 1e6}


class WeightSyncError(RuntimeError):
    pass


def verify_read_back(engine: RolloutEngine, name: str, sent: torch.Tensor | None) -> None:
    """``name`` read back from the engine must equal what was sent (within the engine's dtype): a sync that
    silently changed nothing fails loudly. (Read-back needs the SGLang model class to implement
    ``get_weights_by_name``: Llama does, Qwen2 does not in 0.5.23.)"""
    if sent is None:
        raise WeightSyncError(f"verify_name {name!r} was not among the synced tensors")
    got = torch.as_tensor(engine.get_weight(name)).float()
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
