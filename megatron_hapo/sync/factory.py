"""The one way a run builds its weight synchronizer: transport, transforms and policy from the config."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from megatron_hapo.rollout.types import RolloutEngine
from megatron_hapo.sync.synchronizer import WeightSynchronizer
from megatron_hapo.sync.transports import DiskTransport, DistributedTransport, TensorTransport, Transport

# The parameter read back after every sync: in every decoder family we map, never fused, quantised or
# sharded by SGLang, and trained at every step (a few KB per server).
VERIFY_NAME = "model.norm.weight"


def make_synchronizer(
    cfg, engine: RolloutEngine, model_path: str, run_dir: str | Path | None = None
) -> WeightSynchronizer:
    """The synchronizer of ``engine`` under ``cfg`` (a ``RootConfig``), on the lead rank:

    * transport: the in-process engine is colocated, so tensors go by ``update_weights_from_tensor``
      (shared memory on CPU, CUDA IPC on GPU); a fleet gets ``rollout.weight_sync``: a broadcast to every
      server rank (``distributed``) or an HF checkpoint it reloads (``disk``, written under ``run_dir``,
      with the config and tokenizer files of ``model_path``, the checkpoint the engine started from);
    * transforms: blockwise FP8 rollout quantises the stream on the way (``sync/fp8.py``, docs/fp8.md);
    * policy: ``rollout.sync_policy`` for requests in flight;
    * verification: :data:`VERIFY_NAME` is read back after every sync and must equal what was sent.
    """
    r = cfg.rollout
    transforms = ()
    if r.quantization == "fp8" and r.fp8_format == "blockwise":
        from megatron_hapo.sync.fp8 import fp8_rollout_stream

        transforms = (fp8_rollout_stream,)
    return WeightSynchronizer(
        engine,
        _transport(cfg, engine, model_path, run_dir),
        policy=r.sync_policy,
        transforms=transforms,
        timeout_s=r.request_timeout_s,
        verify_name=VERIFY_NAME,
        # the engines serve model.dtype (attached servers are checked to)
        engine_dtype=getattr(torch, cfg.model.dtype),
    )


def _transport(cfg, engine: RolloutEngine, model_path: str, run_dir) -> Transport:
    r = cfg.rollout
    if r.engine == "inprocess":
        return TensorTransport(engine)
    if r.weight_sync == "disk":
        root = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="hapo-sync-"))
        return DiskTransport(engine, model_path, root / "synced_weights")
    return DistributedTransport(
        engine, master_address=r.sync_address, group_name="hapo_fleet_sync", timeout_s=r.sync_timeout_s
    )
