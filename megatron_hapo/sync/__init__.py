"""Weight sync Megatron -> rollout engine: streaming export, buckets, transports."""

from megatron_hapo.sync.buckets import iter_buckets
from megatron_hapo.sync.transports import DiskTransport, DistributedTransport, TensorTransport, transport_for
from megatron_hapo.sync.weight_sync import SyncReport, WeightSyncError, push_weights

__all__ = [
    "DiskTransport",
    "DistributedTransport",
    "SyncReport",
    "TensorTransport",
    "WeightSyncError",
    "iter_buckets",
    "push_weights",
    "transport_for",
]
