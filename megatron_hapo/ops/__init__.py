"""Fused vocab-parallel ops: per-token log-prob + entropy, and the HAPO loss straight from logits.
(:mod:`.cpu_entropy`, the sampler's row entropy on CPU, is imported on its own by
``megatron_hapo.algorithms.temperature``.)

Importing this package imports neither Megatron nor Triton; the Triton kernels load on first use.
See ``docs/ops.md`` for the contract, the memory budget and how the implementation is chosen.
"""

from megatron_hapo.ops.hapo_loss import fused_hapo_loss
from megatron_hapo.ops.logprob_entropy import (
    IMPLS,
    resolve_impl,
    triton_available,
    vocab_parallel_logprob_entropy,
)

__all__ = ["IMPLS", "fused_hapo_loss", "resolve_impl", "triton_available", "vocab_parallel_logprob_entropy"]
