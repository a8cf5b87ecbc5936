"""Process-group and model-parallel initialisation for torchrun launches (nccl on GPU, gloo on CPU)."""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megatron_hapo.parallel import cpu_compat


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the torchrun world."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


def compute_device() -> torch.device:
    """The device this process computes and communicates on: its current CUDA device when CUDA is
    available (NCCL collectives need CUDA tensors), else the CPU (gloo)."""
    # through cpu_compat.cuda_available and torch.device(current_device()) so that a test can point the
    # "current device" elsewhere (e.g. at `meta`) and see where the model and the batches end up
    if cpu_compat.cuda_available():
        return torch.device(torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_minutes: float = 10.0) -> DistEnv:
    """Initialise the default process group from torchrun's environment (idempotent).

    Without torchrun's variables (plain ``python`` or ``pytest``) this makes a world of one with an
    in-process store (nothing listens). ``backend`` defaults to nccl with CUDA and gloo without. A finite
    timeout turns a rank stuck in a collective into an error instead of a silent hang.
    """
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ:  # launched by torchrun (or a cluster launcher setting its variables)
            dist.init_process_group(backend, timeout=timeout)
        else:  # plain python / pytest: a world of one, leaving the environment untouched
            # an in-process store: no socket at all (a tcp:// store would listen on every interface,
            # whatever host it names: torch's TCPStore; docs/security.md)
            dist.init_process_group(backend, store=dist.HashStore(), world_size=1, rank=0, timeout=timeout)
    return DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=dist.get_backend(),
    )


def initialize_model_parallel(
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    context_parallel: int = 1,
    virtual_pipeline_parallel: int | None = None,
    seed: int = 1234,
    **megatron_kwargs,
) -> None:
    """Megatron's ``parallel_state.initialize_model_parallel`` plus the CPU shims and seeding.

    Data parallel size is what remains: ``world / (TP x PP x CP)``. Extra keyword arguments go to
    Megatron unchanged.
    """
    from megatron.core import parallel_state

    cpu_compat.apply_runtime_patches()
    world = dist.get_world_size()
    model_parallel = tensor_parallel * pipeline_parallel * context_parallel
    if world % model_parallel:
        raise ValueError(
            f"world size {world} is not divisible by tensor_parallel x pipeline_parallel x context_parallel "
            f"= {tensor_parallel} x {pipeline_parallel} x {context_parallel} = {model_parallel}; "
            "change the parallel sizes or the number of processes (torchrun --nproc-per-node)."
        )
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=virtual_pipeline_parallel,
        context_parallel_size=context_parallel,
        **megatron_kwargs,
    )
    seed_model_parallel(seed)


def seed_model_parallel(seed: int) -> None:
    """Seed python, numpy and torch the way megatron.training does.

    The default generator gets ``seed + 100 * pp_rank`` (same on all TP and DP ranks, so
    ``use_cpu_initialization`` builds identical master weights that each TP rank slices), and
    Megatron's tracker gets its per-TP-rank stream for dropout in tensor-parallel regions.
    """
    from megatron.core import parallel_state, tensor_parallel

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_model_parallel() -> None:
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
