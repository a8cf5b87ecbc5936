"""FP8 training settings: ``precision`` config -> Megatron-Core ``TransformerConfig`` / optimizer / DDP kwargs,
and the one log line naming the optimizer and norm implementations Megatron picked.

How FP8 runs in Megatron-Core 0.19.2 (read from the installed sources, ``megatron/core``):

* ``TransformerConfig.fp8`` ("e4m3" | "hybrid") and ``fp8_recipe`` ("delayed" | "tensorwise" |
  "blockwise" | ...) select a Transformer Engine recipe in ``fp8_utils.get_fp8_recipe``
  (``DelayedScaling`` / ``Float8CurrentScaling`` / ``Float8BlockScaling``).
* ``TransformerBlock.forward`` enters ``te.pytorch.fp8_autocast`` itself (``transformer_block.py``: one outer
  context for ``delayed``, one per layer otherwise, so ``first_last_layers_bf16`` can leave layers
  ``< num_layers_at_start_in_bf16`` and ``>= num_layers - num_layers_at_end_in_bf16`` outside it). The caller
  adds no autocast. Only the transformer layers are in the context: the embedding, the final norm, the
  LM head (``output_layer``) and hence the logits and our fused HAPO loss stay in bf16/fp32.
* ``fp8_param`` builds the layers under ``te.pytorch.fp8_model_init`` (``TransformerBlock._build_layers``),
  so GEMM weights are stored as TE ``Float8Tensor``; Megatron-LM sets it from ``--fp8-param-gather``
  (``megatron/training/argument_utils.py``) together with ``DistributedDataParallelConfig.fp8_param_gather``.
* **Without Transformer Engine ``get_fp8_context`` returns ``nullcontext()``** (``fp8_utils.py``, the
  ``else`` branch of ``if HAVE_TE``), and the local (non-TE) layer spec uses plain torch linears: FP8 asked
  for there would silently train in bf16. ``megatron_hapo.models.builder.build_gpt_model`` therefore
  refuses ``fp8`` unless the TE spec is used (``check_fp8_spec``).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# TransformerConfig fields this module sets; everything else keeps Megatron's default
# (fp8_margin=0, fp8_amax_history_len=1, fp8_amax_compute_algo="most_recent", fp8_wgrad=True).
FP8_TRANSFORMER_FIELDS = (
    "fp8",
    "fp8_recipe",
    "fp8_param",
    "first_last_layers_bf16",
    "num_layers_at_start_in_bf16",
    "num_layers_at_end_in_bf16",
)


class Fp8ConfigError(ValueError):
    """FP8 was asked for in a way that cannot run as asked (never silently degraded to bf16)."""


def fp8_config_overrides(precision: Any) -> dict[str, Any]:
    """``TransformerConfig`` kwargs for ``precision`` (a ``PrecisionConfig`` or any object with its fields).

    Returns ``{}`` when ``precision.fp8`` is null (bf16/fp16/fp32 training: Megatron's defaults, FP8 off).
    Otherwise the six ``FP8_TRANSFORMER_FIELDS``; the bf16 layer counts are 0 when
    ``first_last_layers_bf16`` is false (Megatron ignores them then; 0 makes the intent explicit in logs).
    Raises ``Fp8ConfigError`` for ``fp8_param`` without ``fp8`` (Megatron would raise later, less clearly).
    """
    fp8 = getattr(precision, "fp8", None)
    if fp8 is None:
        if getattr(precision, "fp8_param", False):
            raise Fp8ConfigError(
                "precision.fp8_param=true needs precision.fp8 (e4m3 or hybrid); set both or neither"
            )
        return {}
    if fp8 not in ("e4m3", "hybrid"):
        raise Fp8ConfigError(f"precision.fp8 must be e4m3, hybrid or null, got {fp8!r}")
    recipe = precision.fp8_recipe
    if recipe not in ("delayed", "tensorwise", "blockwise"):
        raise Fp8ConfigError(f"precision.fp8_recipe must be delayed, tensorwise or blockwise, got {recipe!r}")
    bf16_ends = bool(precision.first_last_layers_bf16)
    if bf16_ends and recipe == "delayed":
        # Megatron asserts the same (fp8_utils.get_fp8_context): per-layer autocast breaks amax reduction.
        raise Fp8ConfigError(
            "precision.first_last_layers_bf16 is not supported with fp8_recipe=delayed; "
            "use tensorwise or blockwise, or first_last_layers_bf16=false"
        )
    return {
        "fp8": fp8,
        "fp8_recipe": recipe,
        "fp8_param": bool(precision.fp8_param),
        "first_last_layers_bf16": bf16_ends,
        "num_layers_at_start_in_bf16": int(precision.num_layers_at_start_in_bf16) if bf16_ends else 0,
        "num_layers_at_end_in_bf16": int(precision.num_layers_at_end_in_bf16) if bf16_ends else 0,
    }


def fp8_optimizer_overrides(precision: Any) -> dict[str, Any]:
    """``megatron.core.optimizer.OptimizerConfig`` kwargs: ``fp8_recipe`` (read by the distributed optimizer
    when parameters are FP8; ``{}`` when FP8 is off)."""
    return {"fp8_recipe": precision.fp8_recipe} if getattr(precision, "fp8", None) is not None else {}


def fp8_ddp_overrides(precision: Any) -> dict[str, Any]:
    """``DistributedDataParallelConfig`` kwargs: ``fp8_param_gather`` mirrors ``fp8_param`` as in Megatron-LM."""
    if getattr(precision, "fp8", None) is not None and getattr(precision, "fp8_param", False):
        return {"fp8_param_gather": True}
    return {}


def check_fp8_spec(config_fp8: str | None, use_te_spec: bool) -> None:
    """Raise ``Fp8ConfigError`` when FP8 is requested but the layer spec is not Transformer Engine's.

    Megatron's local spec has no FP8 GEMMs and ``get_fp8_context`` is a no-op without TE, so this is the
    last point where an FP8 request could turn into a silent bf16 run.
    """
    if config_fp8 is not None and not use_te_spec:
        raise Fp8ConfigError(
            f"precision.fp8={config_fp8} needs the Transformer Engine layer spec, but the model is being built "
            "with the local (torch) spec, which has no FP8 GEMMs (Megatron would silently run bf16). Set "
            "model.layer_spec=te (or auto) on a CUDA machine with transformer-engine installed, or "
            "precision.fp8=null"
        )


def implementation_summary(model: Any = None, optimizer: Any = None) -> str:
    """One line naming the optimizer, norm and linear implementations in use, e.g.
    ``optimizer=torch.optim.adamw.AdamW (Megatron fallback to torch AdamW: no TE/apex) norm=torch:RMSNorm ...``.

    ``optimizer`` is Megatron's optimizer (``get_megatron_optimizer``'s result: chained / mixed-precision /
    distributed wrappers are unwrapped down to the torch optimizer). ``model`` is any module tree; its norm and
    linear classes are listed by name. apex is never required: Megatron imports it when present
    (``megatron/core/optimizer/__init__.py``: TE FusedAdam, else apex FusedAdam, else torch AdamW).
    """
    parts = []
    if optimizer is not None:
        names = sorted({_qualname(o) for o in _inner_optimizers(optimizer)})
        parts.append(f"optimizer={'+'.join(names) or type(optimizer).__name__} ({_adam_source()})")
    if model is not None:
        norms, linears = set(), set()
        for m in model.modules():
            n = type(m).__name__
            # "package:Class" tells torch's RMSNorm from TE's or apex's class of the same name
            tagged = f"{type(m).__module__.split('.')[0]}:{n}"
            if "Norm" in n:
                norms.add(tagged)
            elif "Linear" in n:
                linears.add(tagged)
        parts.append(f"norm={'+'.join(sorted(norms)) or 'none'}")
        parts.append(f"linear={'+'.join(sorted(linears)) or 'none'}")
    parts.append(f"apex={'importable' if _importable('apex') else 'absent'}")
    parts.append(f"transformer_engine={'importable' if _importable('transformer_engine') else 'absent'}")
    return " ".join(parts)


def log_implementations(model: Any = None, optimizer: Any = None) -> str:
    """Log ``implementation_summary`` once at INFO (after the model and optimizer are built); return it."""
    line = implementation_summary(model, optimizer)
    logger.info("implementations: %s", line)
    return line


def _inner_optimizers(opt: Any) -> list[Any]:
    # ChainedOptimizer.chained_optimizers -> MegatronOptimizer.optimizer -> torch.optim.Optimizer
    if hasattr(opt, "chained_optimizers"):
        return [x for o in opt.chained_optimizers for x in _inner_optimizers(o)]
    inner = getattr(opt, "optimizer", None)
    if inner is not None and inner is not opt:
        return _inner_optimizers(inner)
    return [opt]


def _qualname(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _adam_source() -> str:
    """Which Adam megatron.core.optimizer bound at import (it tries TE, then apex, then torch)."""
    try:
        import megatron.core.optimizer as mo
    except Exception as e:  # noqa: BLE001
        return f"megatron.core.optimizer not importable: {type(e).__name__}"
    adam = getattr(mo, "Adam", None)
    mod = getattr(adam, "__module__", "?")
    if mod.startswith("transformer_engine"):
        return "Megatron picked Transformer Engine FusedAdam"
    if mod.startswith("apex"):
        return "Megatron picked apex FusedAdam"
    return "Megatron fallback to torch AdamW: no TE/apex"


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
