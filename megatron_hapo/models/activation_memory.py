"""What a forward keeps for the backward, measured: bytes saved by autograd, per module.

The dry run's memory plan (``config/plan.py``) estimates activation memory by arithmetic; this measures it
on the real model, on any device, so the arithmetic can be checked (``tests/models/test_activation_memory.py``
on the CPU, the same test on a GPU run). Autograd's saved-tensor hooks see every tensor an operation or an
``autograd.Function`` keeps for its backward; each is attributed to the innermost module running when it
was saved. A storage counts once, for the first module that saves it (views of one tensor share their
storage: a linear layer's input that the norm before it already saved costs nothing more), and parameters
do not count (they are resident whatever the activations). What is counted is the whole storage a saved
view keeps alive, which is what the allocator holds.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

import torch


class SavedTensors:
    """Bytes kept for the backward, by module name (``""``: outside every module of the model)."""

    def __init__(self) -> None:
        self.by_module: dict[str, int] = defaultdict(int)

    def _under(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(name below ``prefix``, bytes) of ``prefix`` and its submodules; ``"decoder.layers.1"`` is not
        a prefix of ``"decoder.layers.10"``."""
        for name, nbytes in self.by_module.items():
            if not prefix or name == prefix or name.startswith(prefix + "."):
                yield name[len(prefix) :].lstrip("."), nbytes

    def total(self, prefix: str = "") -> int:
        """Bytes saved by ``prefix`` and its submodules (all of them for ``""``)."""
        return sum(nbytes for _, nbytes in self._under(prefix))

    def grouped(self, prefix: str, groups: dict[str, tuple[str, ...]]) -> dict[str, int]:
        """Bytes under ``prefix`` by group: a module goes to the first group one of whose name parts
        (``"mlp"``, ``"input_layernorm"``) its own name under ``prefix`` contains, else to ``"other"``."""
        out = dict.fromkeys([*groups, "other"], 0)
        for name, nbytes in self._under(prefix):
            parts = name.split(".")
            group = next((g for g, keys in groups.items() if any(k in parts for k in keys)), "other")
            out[group] += nbytes
        return out


@contextlib.contextmanager
def saved_for_backward(model: torch.nn.Module) -> Iterator[SavedTensors]:
    """Within the block, count what autograd saves while ``model`` (or anything) runs forward."""
    saved = SavedTensors()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    stack: list[str] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            saved.by_module[stack[-1] if stack else ""] += storage.nbytes()
        return t

    def leave(_module, _args, _output) -> None:  # a hook that returned something would replace the output
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: stack.append(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield saved
    finally:
        for h in handles:
            h.remove()


# the parts of a Megatron transformer layer, by the names of its modules (SavedTensors.grouped)
LAYER_PARTS = {
    "norms": ("input_layernorm", "pre_mlp_layernorm", "q_layernorm", "k_layernorm"),
    "attention": ("self_attention",),
    "mlp": ("mlp",),
}


def layer_bytes_per_token(
    gpt: torch.nn.Module, ids, positions, mask=None, layer: int = -1
) -> dict[str, float]:
    """Run Megatron ``GPTModel`` ``gpt`` forward on ``ids`` / ``positions`` / ``mask`` (its forward's) and
    return what its decoder layer ``layer`` saved for the backward, per token, by part (:data:`LAYER_PARTS`
    and ``"other"``)."""
    with saved_for_backward(gpt) as saved:
        gpt(ids, positions, mask)
    index = range(len(gpt.decoder.layers))[layer]
    return {k: v / ids.numel() for k, v in saved.grouped(f"decoder.layers.{index}", LAYER_PARTS).items()}
