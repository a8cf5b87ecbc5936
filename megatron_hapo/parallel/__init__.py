"""One place that makes Megatron-Core work everywhere: torchrun init, model-parallel groups, seeding,
and the CPU compatibility shims (no-ops with CUDA).

Import this package before anything imports ``megatron``: it applies the import-time CPU patches.
"""

from megatron_hapo.parallel import cpu_compat

cpu_compat.apply_import_patches()

from megatron_hapo.parallel.cpu_compat import apply_runtime_patches, device_mode  # noqa: E402
from megatron_hapo.parallel.distributed import (  # noqa: E402
    DistEnv,
    compute_device,
    destroy_model_parallel,
    init_distributed,
    initialize_model_parallel,
    seed_model_parallel,
)

__all__ = [
    "compute_device",
    "DistEnv",
    "apply_runtime_patches",
    "destroy_model_parallel",
    "device_mode",
    "init_distributed",
    "initialize_model_parallel",
    "seed_model_parallel",
]
