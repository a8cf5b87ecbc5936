"""What a weight sync reports, how it fails, and its read-back check (used by ``sync/synchronizer.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from megatron_hapo.config.errors import HapoError
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


class WeightSyncError(HapoError, RuntimeError):
    """A weight update did not reach the engine as sent (a user-facing failure: the commands report its
    message, not a traceback)."""


ENGINE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what a read-back may have been stored in


def verify_read_back(
    engine: RolloutEngine, name: str, sent: torch.Tensor | None, dtype: torch.dtype | None = None
) -> None:
    """``name`` read back from the engine (every server of a fleet) must equal what was sent, rounded to the
    engine's ``dtype``: a sync that silently changed nothing fails loudly. ``dtype`` None (an engine whose dtype
    is not known here: hapo-eval's ``--dtype auto``) accepts a rounding to any of :data:`ENGINE_DTYPES`, which
    on a float32 engine misses a lost update smaller than half a bfloat16 spacing (a norm weight of 1.0 moved
    by less than 0.004). SGLang reads back through the model class's ``get_weights_by_name``, and the plugin
    (``sglang_ext/read_back.py``) through the parameter's name for classes without one (Qwen2 in 0.5.23)."""
    if sent is None:
        raise WeightSyncError(f"verify_name {name!r} was not among the synced tensors")
    got = torch.as_tensor(engine.get_weight(name)).float()
    if got.shape != sent.shape:
        raise WeightSyncError(
            f"after sync, engine {name} has shape {tuple(got.shape)}, sent {tuple(sent.shape)} (a tensor-"
            "parallel shard or a truncated read: verify a parameter the engine keeps whole, a norm)"
        )
    # Exact, at the engine's precision: SGLang casts what it receives into its parameter (an fp32 value
    # sent to a bf16 engine is rounded to nearest, as .to(bfloat16) rounds). A tolerance would hide a
    # sync that did not arrive, since one RL step moves a weight by far less than any sensible tolerance.
    dtypes = ENGINE_DTYPES if dtype is None else (dtype,)
    if not any(torch.equal(got, sent.to(d).float()) for d in dtypes):
        err = (got - sent).abs().max().item()
        raise WeightSyncError(
            f"after sync, engine {name} differs from what was sent by up to {err:.3g} (not a rounding to "
            f"{' or '.join(str(d) for d in dtypes)}): the weights did not arrive"
        )
