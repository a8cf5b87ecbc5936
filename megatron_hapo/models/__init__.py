"""HF <-> Megatron-Core models for Qwen2/2.5, Qwen3 and Llama 3: build, load, export, convert, verify.

* :func:`load_arch` - HF config -> :class:`ModelArch` (``hf_config``)
* :func:`build_gpt_model` - ``ModelArch`` -> this rank's Megatron ``GPTModel`` (``builder``)
* :func:`load_hf_weights` - HF safetensors -> the model's parameters at any TP/PP (``loading``)
* :func:`export_hf_weights` - streaming ``(hf_name, tensor)`` export for conversion and weight sync (``export``)
* :func:`save_checkpoint` / :func:`load_checkpoint` - torch_dist checkpoints, resharding on load (``mcore_io``)
* ``mappings`` - the declarative per-family parameter tables; ``convert`` - the ``hapo-convert`` CLI

Megatron itself is imported lazily, inside the functions that need it.
"""

from megatron_hapo.models.builder import build_gpt_model, transformer_config, transformer_engine_status
from megatron_hapo.models.errors import (
    ConfigMismatchError,
    ConversionError,
    MissingWeightsError,
    ParallelLayoutError,
    UnsupportedArchitectureError,
)
from megatron_hapo.models.export import export_hf_weights
from megatron_hapo.models.hf_config import Llama3RopeScaling, ModelArch, load_arch
from megatron_hapo.models.loading import load_hf_weights
from megatron_hapo.models.mcore_io import checkpoint_padded_vocab, load_checkpoint, save_checkpoint

__all__ = [
    "ConfigMismatchError",
    "ConversionError",
    "Llama3RopeScaling",
    "MissingWeightsError",
    "ModelArch",
    "ParallelLayoutError",
    "UnsupportedArchitectureError",
    "build_gpt_model",
    "checkpoint_padded_vocab",
    "export_hf_weights",
    "load_arch",
    "load_checkpoint",
    "load_hf_weights",
    "save_checkpoint",
    "transformer_config",
    "transformer_engine_status",
]
