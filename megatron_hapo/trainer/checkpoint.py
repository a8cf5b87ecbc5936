"""Checkpoints of a run: Megatron distributed checkpoint (model + optimizer, any TP/PP on load) plus
``trainer_state.json`` (the loop's :class:`~megatron_hapo.trainer.state.TrainerState`, the rollout stage's
data position under ``rollout``, the LR scheduler under ``scheduler``: format :data:`STATE_FORMAT`), the
batch generated ahead under ``rollout.max_staleness=1`` in ``ready_batch.pt`` (binary: at real shapes it is
millions of tokens, which JSON would turn into gigabytes), and, written last, ``manifest.json`` (every
file's size and CRC-32, see :mod:`~megatron_hapo.trainer.manifest`).

Layout: ``<checkpoint.dir>/step_<N>/``. A checkpoint is written into ``.tmp_step_<N>``, every file and
the directory are fsynced, the manifest is written and fsynced, and only then is the directory renamed to
``step_<N>`` (and the parent fsynced): a process killed at any moment leaves the previous checkpoints as
they were. ``checkpoint.keep_last`` prunes older ones by renaming them out of the way first.
``checkpoint.resume``: ``auto`` = the newest checkpoint that passes its manifest (a bad one is named and
skipped), ``none`` = fresh, or a path (which must pass).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_hapo.checkpoint_io.mcore_io import load_model_state, model_state
from megatron_hapo.config.errors import HapoError
from megatron_hapo.parallel.checkpointing import load_sharded, save_sharded
from megatron_hapo.parallel.lead import wait_for_lead
from megatron_hapo.trainer import manifest, optimizer_layout
from megatron_hapo.trainer.manifest import CheckpointInvalid
from megatron_hapo.trainer.optim import load_scheduler_state

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
# trainer_state.json layouts: 1 (no "format" key, before issue 18): the rollout stage's "data_order" and
# "next_group" at the top level; 2: under "rollout", with the batch generated ahead inline as
# rollout.ready_batch; 3: that batch in READY_BATCH_FILE, rollout.ready_batch = {"file": READY_BATCH_FILE}.
# Older versions are read by upgrading them (:func:`upgrade_state`).
STATE_FORMAT = 3
READY_BATCH_FILE = "ready_batch.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# the distributed optimizer's state in the canonical per-parameter layout: loads at any TP/PP/DP
# (Megatron's default format, flattened ranges, is rejected by its own dist_checkpointing)
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _state(policy, is_loading: bool = False) -> dict:
    model_sd = model_state(policy.chunks)  # {"model": ...}, or {"model0": ..., ...} per virtual stage
    optimizer_sd = policy.optimizer.sharded_state_dict(
        model_sd, is_loading=is_loading, metadata=_OPTIMIZER_METADATA
    )
    return {**model_sd, "optimizer": optimizer_sd}


class CheckpointFormatUnknown(HapoError, ValueError):
    """A checkpoint whose ``trainer_state.json`` has a newer layout than this code reads (not skipped by
    ``checkpoint.resume=auto``: falling back to an older checkpoint would throw the newer run away)."""


def upgrade_state(state: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``trainer_state.json``'s content in the layout of :data:`STATE_FORMAT`: version 1 (no ``format``)
    gets its ``data_order`` / ``next_group`` moved under ``rollout``; a newer version is refused."""
    version = state.get("format", 1)
    if version == STATE_FORMAT:
        return state
    if version == 1:
        out = {k: v for k, v in state.items() if k not in ("data_order", "next_group")}
        if "data_order" in state:
            out["rollout"] = {"data_order": state["data_order"], "next_group": state["next_group"]}
        return dict(out, format=STATE_FORMAT)
    if version == 2:  # an inline ready batch reads as it is
        return dict(state, format=STATE_FORMAT)
    raise CheckpointFormatUnknown(
        f"{where}: trainer_state.json has format {version!r}, this megatron-hapo reads formats 1 to "
        f"{STATE_FORMAT}; resume it with the version that wrote it, or start elsewhere (checkpoint.resume=none "
        "with another trainer.run_dir)"
    )


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The ``step_<N>`` directories under ``directory``, oldest first (not verified: see :func:`select`)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def verify(path: str | Path) -> int:
    """The step of the checkpoint at ``path`` after checking it against its manifest (and that its trainer
    state names the same step); raises :class:`CheckpointInvalid` naming the checkpoint and the problem, or
    :class:`CheckpointFormatUnknown` when its ``trainer_state.json`` layout is newer than this code's."""
    path = Path(path)
    step = manifest.check(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        state_step = state["step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointInvalid(f"{path / STATE_FILE}: unreadable ({type(e).__name__}: {e})") from None
    upgrade_state(state, path)  # a layout this code cannot read is refused here, before any engine starts
    if state_step != step:
        raise CheckpointInvalid(f"{path}: {STATE_FILE} says step {state_step}, the manifest step {step}")
    return step


def select(setting: str, directory: str | Path) -> Path | None:
    """The checkpoint to resume from per ``checkpoint.resume``, verified; None to start fresh.

    ``auto``: the newest checkpoint under ``directory`` that passes :func:`verify`; every newer one that
    fails is named in a warning, with the one used instead. Raises :class:`CheckpointInvalid` when
    checkpoints exist and none passes (starting over silently would lose the run), or when an explicit
    path fails."""
    if setting == "none":
        return None
    if setting != "auto":
        path = Path(setting)
        try:
            verify(path)
        except CheckpointInvalid as e:
            raise CheckpointInvalid(
                f"checkpoint.resume={setting} cannot be used: {e}. Point it at another step_<N> directory, "
                f"or use checkpoint.resume=auto to take the newest good one in checkpoint.dir"
            ) from None
        return path
    found, bad = list_checkpoints(directory), []
    for path in reversed(found):
        try:
            verify(path)
        except CheckpointInvalid as e:
            bad.append(str(e))
            logger.warning("checkpoint %s is unusable: %s; trying the one before it", path.name, e)
            continue
        if bad:
            logger.warning(
                "resuming from %s, the newest good checkpoint (skipped %d bad one(s))", path, len(bad)
            )
        return path
    if bad:
        raise CheckpointInvalid(
            f"no usable checkpoint in {directory}: " + "; ".join(bad) + ". Move the bad ones away to start "
            "this run over, or give checkpoint.resume=<path> of a good copy"
        )
    return None


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
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".tmp_*"):  # a killed save or prune: never a checkpoint
            shutil.rmtree(leftover, ignore_errors=True)
    wait_for_lead()  # rank 0's file work in this function: on the lead group (parallel/lead.py)
    save_sharded(_state(policy), tmp)
    if hf_reference is not None:
        _export_hf(policy, tmp / "hf", hf_reference)
    state = dict(trainer_state, format=STATE_FORMAT, step=step, scheduler=policy.scheduler.state_dict())
    wait_for_lead()
    if lead:
        rollout = state.get("rollout") or {}
        if rollout.get("ready_batch") is not None:
            torch.save(pack_lists(rollout["ready_batch"]), tmp / READY_BATCH_FILE)
            state["rollout"] = dict(rollout, ready_batch={"file": READY_BATCH_FILE})
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        manifest.write(tmp, step)  # fsyncs every file, the manifest and the directory
        if final.exists():  # a checkpoint of this step from an earlier attempt: out of the way first
            _discard(final)
        os.replace(tmp, final)
        manifest.fsync_dir(directory)
        found = list_checkpoints(directory)
        for other in found:  # newer ones belong to the timeline this run resumed before (or skipped as bad)
            if _step_of(other) > step:
                _discard(other)
        if keep_last:
            for old in [p for p in found if _step_of(p) <= step][:-keep_last]:
                _discard(old)
    wait_for_lead()  # the manifest fsyncs every shard, the prune deletes whole checkpoints
    return final


def _step_of(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _discard(path: Path) -> None:
    """Remove a checkpoint directory: renamed away first, so no ``step_<N>`` is ever half deleted."""
    trash = path.with_name(f".tmp_discard_{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _export_hf(policy, out: Path, hf_reference: str | Path) -> None:
    """The policy as HF safetensors (dtype of ``model.dtype``): the ranks of ``runs_the_export`` walk the
    collective export, global rank 0 writes."""
    from megatron_hapo.checkpoint_io import export_hf_weights
    from megatron_hapo.checkpoint_io.export import runs_the_export
    from megatron_hapo.checkpoint_io.hf_io import HFCheckpointWriter, copy_reference_files

    if not runs_the_export():
        return
    dtype = getattr(torch, policy.cfg.model.dtype)
    writer = HFCheckpointWriter(out, 5 * 10**9, dtype) if dist.get_rank() == 0 else None
    for name, tensor in export_hf_weights(policy.chunks):
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
    """Restore model, optimizer and scheduler from ``path``; return ``trainer_state.json`` in the current
    layout (:func:`upgrade_state`): the loop's state, and each other component's under its key."""
    path = Path(path)
    _ensure_optimizer_state(policy.optimizer)
    wanted = _state(policy, is_loading=True)
    # a mixture of experts' checkpoint loads across EP = 1 and EP > 1 (trainer/optimizer_layout.py)
    chained = optimizer_layout.is_chained_state(wanted["optimizer"])
    optimizer_layout.ask_for_written_keys(wanted["optimizer"], optimizer_layout.written_keys(path))
    loaded = load_sharded(wanted, path)
    load_model_state(policy.chunks, loaded)
    policy.optimizer.load_state_dict(optimizer_layout.reshape_loaded(loaded["optimizer"], chained))
    _unshare_adam_steps(policy.optimizer)
    state = upgrade_state(json.loads((path / STATE_FILE).read_text()), path)
    load_scheduler_state(policy.scheduler, state["scheduler"])
    ready = (state.get("rollout") or {}).get("ready_batch")
    if isinstance(ready, dict) and set(ready) == {"file"}:  # only the lead, which hands the batch out, reads
        # it: gigabytes of Python lists at real shapes, which every other rank would keep for the whole run
        lead = dist.get_rank() == 0
        batch = unpack_lists(torch.load(path / ready["file"], weights_only=True)) if lead else None
        state["rollout"]["ready_batch"] = batch
    return state


_NDARRAY = "__ndarray__"  # pack_lists' tag of a numpy array (its tensor), told apart from the lists it packs


def pack_lists(value: Any) -> Any:
    """``value`` with every non-empty list of ints (or of floats) as an int64 (float64) tensor: exact, and
    compact where the per-token lists of a batch are millions long (``ready_batch.pt``), and every numpy array
    (a routing-replay sample's ``routed_experts``) as ``{"__ndarray__": tensor}`` of its dtype, which
    ``torch.load(weights_only=True)`` reads (a numpy array it refuses). :func:`unpack_lists` is its inverse."""
    if isinstance(value, dict):
        return {k: pack_lists(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, list):
        for kind, dtype in ((int, torch.int64), (float, torch.float64)):
            if value and all(type(x) is kind for x in value):
                return torch.tensor(value, dtype=dtype)
        return [pack_lists(v) for v in value]
    return value


def unpack_lists(value: Any) -> Any:
    """The value :func:`pack_lists` packed: every tensor back to a list of Python numbers, every numpy array
    back to the array."""
    if isinstance(value, dict):
        if value.keys() == {_NDARRAY}:
            return value[_NDARRAY].numpy()
        return {k: unpack_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack_lists(v) for v in value]
    return value.tolist() if isinstance(value, torch.Tensor) else value
