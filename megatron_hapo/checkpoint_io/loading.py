"""HF safetensors -> the parameters of this rank's Megatron model (any TP/PP), through the mapping tables.

Every rank reads only the HF tensors its own parameters need (lazily, from the shards), builds the
full Megatron tensor (TP=1 layout), keeps its TP slice and copies it into the parameter.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from megatron_hapo.checkpoint_io.collective import raise_if_any
from megatron_hapo.checkpoint_io.hf_io import HFCheckpointReader
from megatron_hapo.checkpoint_io.mappings import family_mapping
from megatron_hapo.models.errors import ConfigMismatchError, ConversionError, MissingWeightsError
from megatron_hapo.models.hf_config import ModelArch
from megatron_hapo.models.params import arch_of, as_chunks, named_global_parameters

# HF tensors that may be present and are deliberately not loaded (old checkpoints saved RoPE buffers).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def load_hf_weights(
    model,
    hf_dir: str | os.PathLike | HFCheckpointReader,
    *,
    arch: ModelArch | None = None,
    progress: bool = False,
) -> None:
    """Copy the HF checkpoint in ``hf_dir`` into ``model`` (a chunk or a list of chunks), in place.

    Collective over the default process group (all ranks call it): afterwards rank-wise coverage is
    checked, so an HF tensor no rank used (a config/weights mismatch) raises :class:`MissingWeightsError`.
    """
    from megatron.core import parallel_state as ps

    chunks = as_chunks(model)
    arch = arch_of(chunks, arch)
    mapping = family_mapping(arch.family)
    reader = hf_dir if isinstance(hf_dir, HFCheckpointReader) else HFCheckpointReader(hf_dir)
    tp_rank, tp = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    params = [(name, p, chunk.vocab_size) for chunk in chunks for name, p in named_global_parameters(chunk)]
    used: set[str] = set()
    error = None
    try:
        for name, param, padded_vocab in _progress(params, progress, "HF -> Megatron"):
            bound = mapping.bind(name, arch)
            hf_tensors = [reader.get(n) for n in bound.import_hf_names]
            shard = bound.to_mcore_shard(hf_tensors, padded_vocab, tp_rank, tp)
            if shard.shape != param.shape:
                raise ConfigMismatchError(
                    f"{name}: HF tensors {bound.import_hf_names} give a TP shard of shape {tuple(shard.shape)}, "
                    f"the model has {tuple(param.shape)}; config.json does not match the weights"
                )
            with torch.no_grad():
                param.copy_(shard)
            used.update(bound.import_hf_names)
    except ConversionError as e:  # raise on every rank, not only here (the others would wait forever)
        error = e
    raise_if_any(error)
    _check_all_used(reader, used, arch)


def _check_all_used(reader: HFCheckpointReader, used: set[str], arch: ModelArch) -> None:
    everyone: list = [used]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, used)
    used_anywhere = set().union(*everyone)
    # some tied checkpoints store lm_head.weight anyway (a copy of the embedding)
    ignored = {"lm_head.weight"} if arch.tie_word_embeddings else set()
    unused = sorted(n for n in reader.names() - used_anywhere - ignored if not n.endswith(_IGNORED_SUFFIXES))
    if unused:
        raise MissingWeightsError(
            f"{reader.directory}: {len(unused)} HF tensor(s) are not used by the {arch.family} mapping, e.g. "
            f"{unused[:5]}; the weights do not match config.json (more layers? an unsupported variant?)"
        )


def _progress(items, enabled: bool, desc: str):
    if not enabled or (dist.is_initialized() and dist.get_rank() != 0):
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor")
