"""CPU-ONLY import shims that let SGLang 0.5.23 run on a machine without CUDA.

Installed by ``tools/bootstrap_env.sh`` as a ``.pth`` file in the virtual environment's
site-packages, and only when torch has no CUDA: a ``.pth`` runs at every interpreter start, so the
scheduler and detokenizer processes SGLang starts with ``multiprocessing`` *spawn* get the shims
too. On a GPU machine none of this exists.

The finder is appended to the END of ``sys.meta_path``: it answers only imports that no real
package satisfies, so an environment with real torchvision or vLLM is never affected.
Set ``HAPO_DISABLE_CPU_SHIMS=1`` to switch it off.

Two shims (see docs/background/sglang_cpu.md §4 and docs/install.md):

* ``torchvision`` / ``torchvision.*``: an empty package whose attributes are permissive dummies.
  ``sglang.srt.configs`` imports torchvision unconditionally (multimodal utilities) even for text
  models; the PyPI torchvision wheel matching torch 2.13 is built against CUDA torch and fails.
* ``vllm._custom_ops.rotary_embedding``: a torch implementation. Without CUDA and without
  ``SGLANG_USE_CPU_ENGINE``, SGLang's ``RotaryEmbedding`` takes its "fallback kernel" branch,
  which imports this one vLLM op.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types

_TORCHVISION = "torchvision"
_VLLM = "vllm"
_VLLM_OPS = "vllm._custom_ops"


class _Any:
    """Permissive placeholder: callable, every attribute, usable as a base class."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Any()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any()

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):  # import machinery and pickle probe dunders
            raise AttributeError(name)
        return _Any()


def rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox):
    """In-place RoPE with vLLM's ``_custom_ops.rotary_embedding`` signature.

    ``query``/``key``: ``[T, heads * head_size]`` (or ``[T, heads, head_size]``), rotated in place.
    ``cos_sin_cache``: ``[max_pos, rotary_dim]`` = ``[cos | sin]``. Per head, with
    ``c, s = cos_sin_cache[positions].chunk(2)``: ``x1' = x1 c - x2 s``, ``x2' = x2 c + x1 s``, where
    (x1, x2) are the two halves (``is_neox``) or the even/odd channels (GPT-J) of the first
    ``rotary_dim`` channels; the rest pass through (partial rotary).
    """
    import torch

    cos, sin = cos_sin_cache[positions.flatten()].chunk(2, dim=-1)  # [T, rot/2] each
    rot = 2 * cos.shape[-1]
    for x in (query, key):
        if x is None:
            continue
        v = x.view(cos.shape[0], -1, head_size)[..., :rot]  # [T, heads, rot], a view into x
        c, s = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
        x1, x2 = v.chunk(2, dim=-1) if is_neox else (v[..., 0::2], v[..., 1::2])
        o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s
        v.copy_(torch.cat((o1, o2), -1) if is_neox else torch.stack((o1, o2), -1).flatten(-2))


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == _TORCHVISION or fullname.startswith(_TORCHVISION + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname in (_VLLM, _VLLM_OPS):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname == _VLLM)
        return None

    def create_module(self, spec):
        if spec.name == _VLLM_OPS:
            module = types.ModuleType(spec.name)
            module.rotary_embedding = rotary_embedding
        elif spec.name == _VLLM:
            module = types.ModuleType(spec.name)
            module.__path__ = []
        else:
            module = _StubModule(spec.name)
            module.__path__ = []
            module.__version__ = "0.0.0+hapo-cpu-stub"
        module.__hapo_cpu_shim__ = True
        return module

    def exec_module(self, module):
        pass


def install() -> None:
    """Append the shim finder to ``sys.meta_path`` once (no-op if disabled or already there)."""
    if os.environ.get("HAPO_DISABLE_CPU_SHIMS") == "1":
        return
    if any(isinstance(f, _ShimFinder) for f in sys.meta_path):
        return
    sys.meta_path.append(_ShimFinder())
