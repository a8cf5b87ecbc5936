"""Pinned host buffers on a CPU-only machine: SGLang's routed-experts capture (R3) without CUDA.

With ``enable_return_routed_experts`` SGLang keeps every token's routed experts in a host buffer that it
page-locks with ``cudaHostRegister`` (``sglang.srt.mem_cache.pool_host.common._cuda_host_register``), so
the device-to-host copies can be asynchronous. A torch built without CUDA has no ``cudart``, and the
engine's start fails with "Torch not compiled with CUDA enabled". Page-locking only matters for copies from
a GPU; on a machine without one there is nothing to register, and this AROUND hook skips it. With CUDA the
original runs unchanged.
"""

from __future__ import annotations

import torch

HOOK_TARGET = "sglang.srt.mem_cache.pool_host.common._cuda_host_register"


def cuda_host_register_hook(original, buffer: torch.Tensor, *args, **kwargs):
    """AROUND hook on SGLang's ``_cuda_host_register``: nothing to register where torch has no CUDA."""
    if not torch.backends.cuda.is_built():
        return None
    return original(buffer, *args, **kwargs)
