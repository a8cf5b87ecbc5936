"""Weight sync Megatron -> rollout engine: streaming export, buckets, transports."""

from megatron_hapo.sync.buckets import iter_buckets
from megatron_hapo.sync.transports import DiskTransport, TensorTransport
from megatron_hapo.sync.weight_sync import SyncReport, WeightSyncError, push_weights

__all__ = [
    "DiskTransport",
    "SyncReport",
    "TensorTransport",
    "WeightSyncError",
    "iter_buckets",
    "push_weights",
]
