"""Read-back of a parameter by its HF name for model classes that SGLang cannot read back.

The trainer's weight sync reads one parameter back from every server after each sync and compares it
with what it sent (``megatron_hapo/sync/weight_sync.py::verify_read_back``), so that a sync that did not
change the weights fails loudly. SGLang serves that read through ``get_weights_by_name``, which it
delegates to the model class; Llama implements it, Qwen2 (our demo and paper models) does not in 0.5.23,
and SGLang then logs an error and answers ``None``.

One AROUND hook on the model runner's ``get_weights_by_name`` fills the gap: when the model class has no
reader of its own, the parameter is looked up under its exact name. That serves every parameter SGLang
keeps under its HF name (norms, embeddings, unfused projections); fused ones (``q_proj`` inside
``qkv_proj``) are answered with an error naming the fused parameters, and a tensor-parallel shard comes
back as the shard (its shape then differs from what the trainer sent, and the check says so). Model
classes with their own reader are left alone.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

HOOK_TARGET = (
    "sglang.srt.model_executor.model_runner_components.weight_exporter.WeightExporter.get_weights_by_name"
)


def read_parameter(model: torch.nn.Module, name: str, truncate_size: int) -> list:
    """``name`` as SGLang's readers return it: fp32 values as nested lists, the first ``truncate_size``
    rows (KeyError, naming the parameters there are, when ``name`` is not one of them)."""
    params = dict(model.named_parameters())
    if name not in params:
        fused = sorted(n for n in params if n.endswith("_proj.weight") and ".layers.0." in n)
        raise KeyError(
            f"{type(model).__name__} has no parameter {name!r} under that name (SGLang fuses some HF tensors; "
            f"layer 0's projections here are {fused}); read back a parameter it keeps whole, such as "
            "model.norm.weight"
        )
    return params[name].detach().to(device="cpu", dtype=torch.float32).tolist()[:truncate_size]


def get_weights_by_name_hook(original, runner, name: str, truncate_size: int = 100):
    """AROUND hook: the model's own reader when it has one, else :func:`read_parameter`; ``None`` on a
    failure, logged, as SGLang's own reader answers."""
    model = runner.get_model()
    if hasattr(model, "get_weights_by_name"):
        return original(runner, name, truncate_size)
    try:
        return read_parameter(model, name, truncate_size)
    except KeyError as exc:
        logger.error("get_weights_by_name: %s", exc.args[0])
        return None
