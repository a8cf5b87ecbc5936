"""Which GPUs each launched rollout server gets (``rollout.launch_servers``).

The trainer's lead rank launches the fleet on its own node, where the training ranks of that node use the
local GPUs ``0 .. training_gpus - 1`` (local rank i on ``cuda:i``). Server k gets the next
``gpus_per_server`` GPUs after them, ``training_gpus + k * gpus_per_server ...``, handed to it as
``CUDA_VISIBLE_DEVICES`` (indices into the trainer's own ``CUDA_VISIBLE_DEVICES`` when that is set), so no
server shares a GPU with a training rank or another server. A node without room for them all is refused
before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping

from megatron_hapo.rollout.types import EngineError


def server_gpus(
    num_servers: int, gpus_per_server: int, node_gpus: int, training_gpus: int
) -> list[list[int]]:
    """Local GPU indices of each server: ``[[t, .., t+g-1], [t+g, ..], ...]`` with t = ``training_gpus``."""
    need = num_servers * gpus_per_server
    if training_gpus + need > node_gpus:
        raise EngineError(
            f"rollout.launch_servers: this node has {node_gpus} GPU(s) and its training ranks use {training_gpus} "
            f"(GPUs 0-{training_gpus - 1}); {num_servers} server(s) x {gpus_per_server} GPU(s) "
            f"(rollout.num_servers x rollout.gpus_per_server) need {need} more. Lower rollout.num_servers, or "
            "run the fleet on nodes of its own (hapo-serve, rollout.server_addresses; docs/rollout.md)"
        )
    first = training_gpus
    return [
        list(range(first + k * gpus_per_server, first + (k + 1) * gpus_per_server))
        for k in range(num_servers)
    ]


def visible_devices(local: list[int], environ: Mapping[str, str]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a child that should see the trainer's local GPUs ``local``."""
    parent = environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None or parent.strip() == "":
        return ",".join(str(i) for i in local)
    ids = [d.strip() for d in parent.split(",") if d.strip()]
    if max(local) >= len(ids):
        raise EngineError(
            f"CUDA_VISIBLE_DEVICES={parent} shows {len(ids)} GPU(s); a rollout server needs local GPU {max(local)}"
        )
    return ",".join(ids[i] for i in local)
