"""Building the policy model: HF config -> Megatron-Core ``GPTModel`` for Qwen2/2.5, Qwen3 and Llama 3, and
running it forward.

* :func:`load_arch` - HF config -> :class:`ModelArch` (``hf_config``); ``known_configs`` - the paper's
  models' config.json facts for dry runs
* :func:`build_gpt_model` - ``ModelArch`` -> this rank's Megatron ``GPTModel`` (``builder``), with the FP8
  training settings of ``precision``
* ``params`` - a model chunk's parameters under global names; ``scoring`` - per-token log-probs and
  entropies of given sequences (forward only)
* ``sdpa_attention`` - the local spec's core attention through PyTorch's fused kernels
  (``model.local_attention``); ``packing`` - packed rows through the model

Moving weights in and out of the model (HF safetensors, torch_dist checkpoints, the mapping tables,
conversion) is :mod:`megatron_hapo.checkpoint_io`; FP8 serving export is :mod:`megatron_hapo.fp8_export`.
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
from megatron_hapo.models.hf_config import Llama3RopeScaling, ModelArch, load_arch

__all__ = [
    "ConfigMismatchError",
    "ConversionError",
    "Llama3RopeScaling",
    "MissingWeightsError",
    "ModelArch",
    "ParallelLayoutError",
    "UnsupportedArchitectureError",
    "build_gpt_model",
    "load_arch",
    "transformer_config",
    "transformer_engine_status",
]
