"""Thin helpers around ``megatron.core.dist_checkpointing`` (torch_dist format, resharding on load)."""

from __future__ import annotations

import os
import queue
from pathlib import Path

import torch.distributed as dist


def _in_process_results_queue() -> None:
    # dist_checkpointing's filesystem writer gets its results queue from a multiprocessing Manager
    # started with *spawn*, which re-imports __main__ (a script without a __main__ guard hangs in
    # save()) and costs ~5 s per process. Synchronous saves only need an in-process queue.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def save_sharded(sharded_state_dict: dict, directory: str | os.PathLike) -> None:
    """Synchronously save a sharded state dict; every rank calls it with the same ``directory``."""
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    if dist.get_rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
    dist.barrier()  # dist_checkpointing requires the directory to exist on every rank
    _in_process_results_queue()
    dist_checkpointing.save(sharded_state_dict, str(directory))


def load_sharded(sharded_state_dict: dict, directory: str | os.PathLike) -> dict:
    """Load into the layout described by ``sharded_state_dict`` (any TP/PP: resharding on load)."""
    from megatron.core import dist_checkpointing

    if not Path(directory).is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    return dist_checkpointing.load(sharded_state_dict, str(directory))
