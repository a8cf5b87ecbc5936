"""Weights in and out of the Megatron policy: HF safetensors <-> Megatron parameters at any TP/PP, and
Megatron's own torch_dist checkpoints.

* ``mappings`` - the declarative per-family parameter tables (HF name <-> Megatron name, and how to split
  or fuse)
* :func:`load_hf_weights` - HF safetensors -> the model's parameters (``loading``, reading through
  ``hf_io``)
* :func:`export_hf_weights` - streaming ``(hf_name, tensor)`` export for conversion and weight sync
  (``export``)
* :func:`save_checkpoint` / :func:`load_checkpoint` - torch_dist checkpoints, resharding on load
  (``mcore_io``)
* ``convert`` - HF <-> Megatron conversion (the ``hapo-convert`` command's work); ``verify`` - logits of the
  converted model against HF's; ``collective`` - fail on every rank together

Megatron itself is imported lazily, inside the functions that need it.
"""

from megatron_hapo.checkpoint_io.export import export_hf_weights
from megatron_hapo.checkpoint_io.loading import load_hf_weights
from megatron_hapo.checkpoint_io.mcore_io import checkpoint_padded_vocab, load_checkpoint, save_checkpoint

__all__ = [
    "checkpoint_padded_vocab",
    "export_hf_weights",
    "load_checkpoint",
    "load_hf_weights",
    "save_checkpoint",
]
