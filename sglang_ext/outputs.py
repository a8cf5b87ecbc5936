"""The per-token T and H, from the sampler to the response, without a device sync in the sampler.

The sampler leaves T_eff [B] and H [B] as device tensors in ``logits_output.customized_info`` (under the
keys of ``megatron_hapo.rollout.sampler_wire``), the way SGLang leaves its own ``next_token_logprobs``
on the device. Two hooks on SGLang's result path then treat them like those log-probs:

* ``GenerationBatchResult.copy_to_cpu`` (BEFORE): under the overlap scheduler SGLang issues its
  device-to-host copies there, on its copy stream, before it records the batch's ``copy_done`` event; the
  hook queues non-blocking copies of T and H into pinned host memory at the same point, so they are
  complete when the scheduler waits for that event.
* ``_maybe_collect_customized_info`` (BEFORE): SGLang's result processing, after ``copy_done``, is where it
  turns its log-probs into lists; the hook turns T and H into lists of floats once per batch (SGLang then
  appends row i to request i's ``meta_info`` as before). Without the overlap scheduler this ``.tolist()``
  is the step's one sync, the same point at which SGLang syncs its log-probs.
"""

from __future__ import annotations

import torch

from megatron_hapo.rollout.sampler_wire import ENTROPY_KEY, TEMPERATURE_KEY

KEYS = (TEMPERATURE_KEY, ENTROPY_KEY)
_RESULT = "sglang.srt.managers.utils.GenerationBatchResult.copy_to_cpu"
_COLLECT = (
    "sglang.srt.managers.scheduler_components.batch_result_processor.SchedulerBatchResultProcessor"
    "._maybe_collect_customized_info"
)


def _copy_to_host(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type != "cuda":  # CPU: nothing to copy; other devices: converted (synced) later
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    tensor.record_stream(torch.cuda.current_stream(tensor.device))  # kept alive until the copy ran
    return host


def start_host_copy(logits_output) -> None:
    """Queue the device-to-host copies of T and H (non-blocking; no sync)."""
    info = getattr(logits_output, "customized_info", None)
    for key in KEYS:
        if info is not None and isinstance(info.get(key), torch.Tensor):
            info[key] = _copy_to_host(info[key])


def to_host_lists(logits_output) -> None:
    """T and H as lists of Python floats (HTTP responses serialise them). Idempotent."""
    info = getattr(logits_output, "customized_info", None)
    for key in KEYS:
        if info is not None and isinstance(info.get(key), torch.Tensor):
            info[key] = info[key].tolist()


def _before_copy_to_cpu(result, *args, **kwargs):
    start_host_copy(result.logits_output)


def _before_collect(processor, i, req, logits_output, *args, **kwargs):
    to_host_lists(logits_output)


OUTPUT_HOOKS = {_RESULT: _before_copy_to_cpu, _COLLECT: _before_collect}
