"""Errors raised by model building and checkpoint conversion.

Each names what was wrong and what to do; ``hapo-convert`` prints the message (no traceback) and
exits with status 2.
"""

from __future__ import annotations

from megatron_hapo.config.errors import HapoError


class ConversionError(HapoError, ValueError):
    """Base class: a model or checkpoint cannot be built, converted or loaded as asked."""


class UnsupportedArchitectureError(ConversionError):
    """The HF config describes an architecture (or a variant of one) the mapping tables do not cover."""


class ConfigMismatchError(ConversionError):
    """A checkpoint does not match the HF config it is paired with (shapes, tied embeddings, ...)."""


class ParallelLayoutError(ConversionError):
    """The requested TP/PP layout cannot hold this model (e.g. TP does not divide the KV heads)."""


class MissingWeightsError(ConversionError):
    """A checkpoint shard or tensor is missing, or the checkpoint holds tensors nothing maps."""
