"""Megatron distributed checkpoints (torch_dist) of a GPT model: save, check, load at any TP/PP.

The checkpoint keys are Megatron's sharded-state-dict keys (TE naming, layers stacked on a leading
dimension), so a checkpoint written with the local spec on CPU loads into the TE spec on GPU and
vice versa. Before loading, :func:`check_checkpoint` compares every tensor's global shape with the
model's and names the mismatches (instead of a deep ``dist_checkpointing`` error).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from megatron_hapo.checkpoint_io.collective import raise_if_any
from megatron_hapo.models.errors import ConfigMismatchError, MissingWeightsError
from megatron_hapo.models.params import as_chunks
from megatron_hapo.parallel.checkpointing import load_sharded, save_sharded

_EMBEDDING_KEY = "embedding.word_embeddings.weight"
_OUTPUT_KEY = "output_layer.weight"


def model_state(model) -> dict[str, Any]:
    """The sharded state dict of ``model`` (a model or a list of virtual-pipeline chunks), in
    megatron.training's layout: ``{"model": ...}`` for one chunk, ``{"model0": ..., "model1": ...}`` for
    several. The sharded keys are global, so a checkpoint loads at any TP/PP/VP."""
    chunks = as_chunks(model)
    return {key: c.sharded_state_dict() for key, c in zip(_state_keys(len(chunks)), chunks, strict=True)}


def load_model_state(model, loaded: dict[str, Any]) -> None:
    """Load what ``load_sharded(model_state(model), ...)`` returned into ``model``'s chunks."""
    chunks = as_chunks(model)
    for key, chunk in zip(_state_keys(len(chunks)), chunks, strict=True):
        chunk.load_state_dict(loaded[key])


def _state_keys(num_chunks: int) -> list[str]:
    return ["model"] if num_chunks == 1 else [f"model{i}" for i in range(num_chunks)]


def save_checkpoint(model, directory: str | os.PathLike) -> None:
    """Write the model (a chunk or a list of VPP chunks) as a torch_dist checkpoint; all ranks call it."""
    save_sharded(model_state(model), directory)


def load_checkpoint(model, directory: str | os.PathLike) -> None:
    """Load a torch_dist checkpoint into ``model`` at its TP/PP layout (resharding); all ranks call it."""
    check_checkpoint(model, directory)
    load_model_state(model, load_sharded(model_state(model), directory))


def tensors_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    """``{key: ShardedTensor}`` (global shapes and dtypes) of a checkpoint, after checking its files exist."""
    from megatron.core import dist_checkpointing
    from torch.distributed.checkpoint import FileSystemReader

    directory = Path(directory)
    if not (directory / "metadata.json").is_file() or not (directory / ".metadata").is_file():
        raise MissingWeightsError(
            f"{directory} is not a Megatron distributed checkpoint (metadata.json / .metadata missing); "
            "pass the directory `hf-to-mcore --out` (or the trainer) wrote"
        )
    storage = FileSystemReader(str(directory)).read_metadata().storage_data
    missing = sorted({s.relative_path for s in storage.values()} - {p.name for p in directory.iterdir()})
    if missing:
        raise MissingWeightsError(
            f"{directory}: checkpoint shard file(s) {missing[:6]} are missing; re-copy the checkpoint"
        )
    return dist_checkpointing.load_tensors_metadata(str(directory))


def checkpoint_padded_vocab(directory: str | os.PathLike) -> int:
    """The padded vocab size a checkpoint was written with (its embedding's row count)."""
    md = tensors_metadata(directory)
    for key in (_EMBEDDING_KEY, _OUTPUT_KEY):
        if key in md:
            return int(md[key].global_shape[0])
    raise ConfigMismatchError(f"{directory} holds no {_EMBEDDING_KEY}: not a GPT checkpoint")


def checkpoint_dtype(directory: str | os.PathLike) -> torch.dtype:
    """The dtype the checkpoint's embedding is stored in."""
    md = tensors_metadata(directory)
    key = _EMBEDDING_KEY if _EMBEDDING_KEY in md else _OUTPUT_KEY
    return md[key].dtype


def check_checkpoint(model, directory: str | os.PathLike) -> None:
    """Raise :class:`ConfigMismatchError` unless every model tensor is in the checkpoint with the same global shape.

    Collective over the default process group (every rank raises if any rank finds a problem).
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.utils import extract_sharded_tensors

    md = tensors_metadata(directory)
    problems = []
    chunks = as_chunks(model)
    if chunks[0].share_embeddings_and_output_weights and _OUTPUT_KEY in md:
        problems.append(
            f"the checkpoint has an untied {_OUTPUT_KEY} but the config says tie_word_embeddings=true"
        )
    for chunk in chunks:
        expected, _ = extract_sharded_tensors(chunk.sharded_state_dict())
        for sh in expected.values():
            if not isinstance(sh, ShardedTensor):
                continue
            if sh.key not in md:
                hint = " (checkpoint written with tied embeddings?)" if sh.key == _OUTPUT_KEY else ""
                problems.append(f"{sh.key} missing{hint}")
            elif tuple(md[sh.key].global_shape) != tuple(sh.global_shape):
                problems.append(
                    f"{sh.key}: checkpoint {tuple(md[sh.key].global_shape)} vs model {tuple(sh.global_shape)}"
                )
    error = None
    if problems:
        error = ConfigMismatchError(
            f"{directory} does not match the model built from the HF config ({len(problems)} problem(s)): "
            + "; ".join(problems[:8])
            + ". Pass the HF config the checkpoint was converted from (--hf / --hf-config)."
        )
    raise_if_any(error)  # stages check different keys: fail on every rank together
