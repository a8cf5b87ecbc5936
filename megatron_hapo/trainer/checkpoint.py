"""Checkpoints of a run: Megatron distributed checkpoint (model + optimizer, any TP/PP on load) plus
``trainer_state.json`` (step, data sampler position, entropy statistics, LR scheduler).

Layout: ``<checkpoint.dir>/step_<N>/``. A checkpoint is written into ``.tmp_step_<N>`` and renamed once
complete, so a directory named ``step_<N>`` is always whole; ``checkpoint.keep_last`` prunes older ones.
``checkpoint.resume``: ``auto`` = the newest complete one if any, ``none`` = fresh, or a path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_hapo.parallel.checkpointing import load_sharded, save_sharded

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# the distributed optimizer's state in the canonical per-parameter layout: loads at any TP/PP/DP
# (Megatron's default format, flattened ranges, is rejected by its own dist_checkpointing)
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _state(policy, is_loading: bool = False) -> dict:
    model_sd = policy.model.module.sharded_state_dict()
    optimizer_sd = policy.optimizer.sharded_state_dict(
        model_sd, is_loading=is_loading, metadata=_OPTIMIZER_METADATA
    )
    return {"model": model_sd, "optimizer": optimizer_sd}


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in d.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(setting: str, directory: str | Path) -> Path | None:
    """The checkpoint to resume from per ``checkpoint.resume``, or None to start fresh."""
    if setting == "none":
        return None
    if setting == "auto":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(setting)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"checkpoint.resume={setting}: no {STATE_FILE} there; pass a step_<N> directory the trainer wrote"
        )
    return path


def save(
    policy,
    directory: str | Path,
    step: int,
    trainer_state: dict[str, Any],
    keep_last: int | None,
    hf_reference: str | Path | None = None,
) -> Path:
    """Write ``step_<step>`` atomically; every rank calls it. Returns the final path.

    ``hf_reference``: also export the policy to ``step_<step>/hf`` as a Hugging Face folder, with config,
    tokenizer and chat template copied from that directory (the run's ``model.hf_path``).
    """
    directory = Path(directory)
    final = directory / f"step_{step}"
    tmp = directory / f".tmp_step_{step}"
    lead = dist.get_rank() == 0
    if lead:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    save_sharded(_state(policy), tmp)
    if hf_reference is not None:
        _export_hf(policy, tmp / "hf", hf_reference)
    state = dict(trainer_state, step=step, scheduler=policy.scheduler.state_dict())
    dist.barrier()
    if lead:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if keep_last:
            for old in list_checkpoints(directory)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _export_hf(policy, out: Path, hf_reference: str | Path) -> None:
    """The policy as HF safetensors (dtype of ``model.dtype``): the model-parallel group of data-parallel
    rank 0 walks the collective export, global rank 0 writes."""
    from megatron.core import parallel_state as ps

    from megatron_hapo.models import export_hf_weights
    from megatron_hapo.models.hf_io import HFCheckpointWriter, copy_reference_files

    if ps.get_data_parallel_rank() != 0:
        return
    dtype = getattr(torch, policy.cfg.model.dtype)
    writer = HFCheckpointWriter(out, 5 * 10**9, dtype) if dist.get_rank() == 0 else None
    for name, tensor in export_hf_weights(policy.model):
        if writer is not None:
            writer.add(name, tensor)
    if writer is not None:
        writer.close()
        copy_reference_files(hf_reference, out, dtype, policy.cfg.model.override_config)


def _ensure_optimizer_state(optimizer) -> None:
    """Give a fresh torch Adam a (zero) state with ``step`` for every parameter before loading into it.

    Megatron's distributed optimizer reads the common ``step`` out of the inner optimizer's state while
    building the state dict to load into; a never-stepped torch Adam (no apex/TE fused Adam, e.g. on
    CPU) has none, and Megatron's own ``init_state_fn`` does not create it.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p.data)
                    state["exp_avg_sq"] = torch.zeros_like(p.data)


def _unshare_adam_steps(optimizer) -> None:
    """Give every parameter its own Adam ``step`` tensor after a load.

    Without apex/TE, Megatron's ``DistributedOptimizer.load_state_dict`` (megatron-core 0.19.2,
    ``distrib_optimizer.py``, "Extract 'step', for non-Apex/TE support") assigns ONE step tensor to
    every parameter's state, and torch's Adam increments each parameter's step in place: after a
    resume the shared counter advanced once per parameter per update (76 instead of 12 for a 17-tensor
    model after 8 + 4 updates), so the bias correction was wrong for every later update.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if isinstance(inner, torch.optim.Optimizer):
            for state in inner.state.values():
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].clone()


def load(policy, path: str | Path) -> dict[str, Any]:
    """Restore model, optimizer and scheduler from ``path``; return the trainer state (step, sampler, stats)."""
    path = Path(path)
    _ensure_optimizer_state(policy.optimizer)
    loaded = load_sharded(_state(policy, is_loading=True), path)
    policy.model.module.load_state_dict(loaded["model"])
    policy.optimizer.load_state_dict(loaded["optimizer"])
    _unshare_adam_steps(policy.optimizer)
    state = json.loads((path / STATE_FILE).read_text())
    policy.scheduler.load_state_dict(state["scheduler"])
    return state
