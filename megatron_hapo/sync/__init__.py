"""Weight sync trainer -> rollout engine: the synchronizer, its transports, transforms and buckets.

Imports run one way: ``sync/`` uses the engine protocol of ``rollout/``; ``rollout/`` never imports ``sync/``.
"""

from megatron_hapo.sync.buckets import iter_buckets
from megatron_hapo.sync.factory import VERIFY_NAME, make_synchronizer
from megatron_hapo.sync.synchronizer import SYNC_POLICIES, WeightSynchronizer, push_weights
from megatron_hapo.sync.transports import DiskTransport, DistributedTransport, TensorTransport, Transport
from megatron_hapo.sync.weight_sync import SyncReport, WeightSyncError

__all__ = [
    "SYNC_POLICIES",
    "VERIFY_NAME",
    "DiskTransport",
    "DistributedTransport",
    "SyncReport",
    "TensorTransport",
    "Transport",
    "WeightSyncError",
    "WeightSynchronizer",
    "iter_buckets",
    "make_synchronizer",
    "push_weights",
]
