"""Walk a Megatron GPT model chunk's parameters under *global* names.

Under pipeline parallelism a stage's ``named_parameters`` count layers from 0; the mapping tables and
checkpoints count them over the whole model. ``TransformerLayer.layer_number`` (1-based, global)
gives the offset, so uneven pipeline splits and virtual stages need no arithmetic here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import torch

_LOCAL_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_LOCAL_EXPERT = re.compile(r"(\.mlp\.experts\.local_experts\.)(\d+)\.")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / Float16Module wrappers (anything exposing ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def as_chunks(model) -> list[torch.nn.Module]:
    """A model or a list of virtual-pipeline chunks -> a list of unwrapped chunks."""
    chunks = list(model) if isinstance(model, Sequence) else [model]
    return [unwrap(c) for c in chunks]


def named_global_parameters(chunk: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """``(global_name, parameter)`` for every parameter of an (unwrapped) GPTModel chunk.

    Global layers, and under expert parallelism global experts: an MoE layer's ``local_expert_indices`` name the
    experts its ``local_experts`` hold on this rank."""
    layers = chunk.decoder.layers if hasattr(chunk, "decoder") else []
    offsets = {str(j): layer.layer_number - 1 for j, layer in enumerate(layers)}
    experts = {str(j): getattr(layer.mlp, "local_expert_indices", None) for j, layer in enumerate(layers)}
    for name, param in chunk.named_parameters():
        local = _LOCAL_LAYER.match(name)
        expert = _LOCAL_EXPERT.search(name) if local else None
        if expert and experts[local.group(1)] is not None:
            index = experts[local.group(1)][int(expert.group(2))]
            name = f"{name[: expert.start(2)]}{index}{name[expert.end(2) :]}"
        name = _LOCAL_LAYER.sub(lambda m: f"decoder.layers.{offsets[m.group(1)]}.", name, count=1)
        yield name, param


def arch_of(chunks: list[torch.nn.Module], arch=None):
    """The ``ModelArch`` a model was built for (``build_gpt_model`` attaches it as ``hapo_arch``)."""
    if arch is not None:
        return arch
    found = getattr(chunks[0], "hapo_arch", None)
    if found is None:
        raise ValueError(
            "the model has no `hapo_arch` attribute (it was not built by megatron_hapo.models.build_gpt_model); "
            "pass arch=load_arch(hf_config_dir)"
        )
    return found
