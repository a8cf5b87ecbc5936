"""Megatron-Core 0.19.2 on a machine without CUDA: the compatibility shims, in one place.

Every function here is a no-op when CUDA is available. On CPU, Megatron-Core's local (non-TE) GPT
path runs unchanged under gloo once these few call sites are redirected; each shim names the
Megatron call that needs it (see docs/background/megatron_cpu.md for the failures they fix).

Order of use (``megatron_hapo.parallel`` does this for you):
  1. :func:`apply_import_patches` before the first ``import megatron``;
  2. :func:`apply_runtime_patches` after it (idempotent);
  3. :func:`device_mode` around model build, training, checkpointing and inference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
import types

import torch

_runtime_patched = False


def cuda_available() -> bool:
    return torch.cuda.is_available()


def apply_import_patches() -> None:
    """Patches that must be in place before ``import megatron.core``."""
    if cuda_available():
        return
    # megatron's jit_fuser is torch.compile, applied as a decorator at import; on CPU it only adds
    # 0.3-1 s per fused function's first call and slows short loops ~2x.
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    torch._dynamo.config.disable = os.environ["TORCHDYNAMO_DISABLE"] == "1"
    _stub_paged_stash_without_triton()
    _nvtx_noops()


def _stub_paged_stash_without_triton() -> None:
    # `import megatron.core` reaches moe/ops/paged_stash.py (via pipeline_parallel.schedules), which
    # imports triton unconditionally. The bootstrap installs triton; this keeps a triton-less env working.
    if importlib.util.find_spec("triton") is not None:
        return
    name = "megatron.core.transformer.moe.ops.paged_stash"
    module = types.ModuleType(name)
    module.GLOBAL_BLOCK_SIZE = 1024  # the real module's value

    def _unavailable(*args, **kwargs):
        raise RuntimeError("MoE paged stash needs triton, which is not installed")

    module.paged_stash_copy_kernel = module.paged_stash_pop_kernel = _unavailable
    sys.modules[name] = module


def _nvtx_noops() -> None:
    # text_generation_controller binds torch.cuda.nvtx.range_push/pop at import; they raise without CUDA.
    nvtx = torch.cuda.nvtx
    for fn in ("range_push", "range_pop", "mark", "range_start", "range_end"):
        setattr(nvtx, fn, lambda *args, **kwargs: None)
    nvtx.range = lambda *args, **kwargs: contextlib.nullcontext()


class _HostStream:
    """Stands in for torch.cuda.Stream: every method is a no-op (host execution is synchronous)."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None

    def record_event(self, *args, **kwargs):
        return _HostEvent()


class _HostEvent(_HostStream):
    """Stands in for torch.cuda.Event; ``elapsed_time`` returns wall-clock milliseconds like CUDA's."""

    def __init__(self, *args, **kwargs):
        self.record()

    def record(self, *args, **kwargs):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def apply_runtime_patches() -> None:
    """Patches applied once after ``import megatron.core`` (no-op with CUDA or when already applied)."""
    global _runtime_patched
    if cuda_available() or _runtime_patched:
        return
    _runtime_patched = True
    _cpu_rng_tracker()
    # RoPE (rotary_pos_embedding: inv_freq.to(device=torch.cuda.current_device())), the attention
    # GlobalMemoryBuffer and many buffers ask for the current CUDA device.
    torch.cuda.current_device = lambda: "cpu"
    # DDP start_grad_sync (torch.cuda.current_stream), PP p2p (torch.cuda.synchronize), inference timers.
    torch.cuda.Stream, torch.cuda.Event = _HostStream, _HostEvent
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = torch.cuda.default_stream = lambda *args, **kwargs: _HostStream()
    torch.cuda.stream = lambda *args, **kwargs: contextlib.nullcontext()
    _torch_norm_sequence_parallel()
    _distopt_load_without_precision_aware_state()
    _default_causal_mask_on_host()
    _moe_split_sizes_as_numpy()
    _uneven_sequence_parallel_collectives()


def _uneven_sequence_parallel_collectives() -> None:
    # Under TP x EP the MoE dispatcher gathers (and its backward reduce-scatters) uneven token counts over the
    # TP group: torch.distributed.all_gather / reduce_scatter with splits of different sizes, which NCCL runs and
    # gloo refuses ("invalid tensor size"). The same results from equal-sized gloo collectives: the gather pads
    # every split to the largest, the reduce-scatter all-reduces the whole input (every rank holds all splits)
    # and keeps its own.
    import torch.distributed as dist
    from megatron.core.tensor_parallel import mappings

    gather, scatter = mappings._gather_along_first_dim, mappings._reduce_scatter_along_first_dim

    def gather_along_first_dim(input_, group, output_split_sizes=None, use_global_buffer=False):
        if output_split_sizes is None or group.size() == 1:
            return gather(input_, group, output_split_sizes, use_global_buffer)
        sizes = [int(n) for n in output_split_sizes]
        padded = input_.new_zeros((max(sizes), *input_.shape[1:]))
        padded[: input_.shape[0]] = input_
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    def reduce_scatter_along_first_dim(input_, group, input_split_sizes=None, use_global_buffer=False):
        if input_split_sizes is None or group.size() == 1:
            return scatter(input_, group, input_split_sizes, use_global_buffer)
        total = input_.contiguous().clone()
        dist.all_reduce(total, group=group)
        return torch.split(total, [int(n) for n in input_split_sizes])[group.rank()].contiguous()

    mappings._gather_along_first_dim = gather_along_first_dim
    mappings._reduce_scatter_along_first_dim = reduce_scatter_along_first_dim


def _moe_split_sizes_as_numpy() -> None:
    # The MoE all-to-all dispatcher moves its split sizes to the host as numpy arrays (moe_utils.
    # maybe_move_tensor_to_cpu(..., as_numpy=True)) only when they are on a CUDA device; on the CPU they stay
    # tensors, which all_to_all_single's C++ binding refuses. Convert them here as the GPU path does.
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    original = moe_utils.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor):
            return tensor.numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


def _default_causal_mask_on_host() -> None:
    # Unfused attention given attention_mask=None (causal; the trainer's one-sequence rows) builds
    # get_default_causal_mask(sq) with device="cuda". Under activation recompute that happens inside
    # autograd's backward, where CudaToCpuMode is not active ("Torch not compiled with CUDA enabled").
    # Build the same mask on the host.
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    def get_default_causal_mask(sq: int) -> torch.Tensor:
        return torch.ones(sq, sq, dtype=torch.bool).triu(1)

    utils.get_default_causal_mask = fused_softmax.get_default_causal_mask = get_default_causal_mask


def _cpu_rng_tracker() -> None:
    # model_parallel_cuda_manual_seed calls torch.cuda.get_rng_state(), and every attention forward
    # forks the "model-parallel-rng" state. Track CPU generator states instead, marked initialised so
    # initialize_rng_tracker keeps this tracker; dropout inside fork() then gets per-TP-rank streams.
    from megatron.core.tensor_parallel import random as mpu_random

    class CpuRNGStatesTracker(mpu_random.CudaRNGStatesTracker):
        def add(self, name, seed):
            if seed in self.seeds_ or name in self.states_:
                raise RuntimeError(f"RNG state {name!r} / seed {seed} already added")
            self._is_initialized = True
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name=mpu_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    mpu_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mpu_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # activation recompute saves/restores "cuda" RNG state around the recomputed forward
    mpu_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mpu_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)


def _torch_norm_sequence_parallel() -> None:
    # WrappedTorchNorm asserts `not config.sequence_parallel` (apex's FusedLayerNorm is the SP path).
    # Under SP build the torch norm and mark its params sequence_parallel, as apex does, so
    # finalize_model_grads all-reduces their grads over the TP group.
    from megatron.core.transformer import torch_norm

    original = torch_norm.WrappedTorchNorm.__new__

    def new(cls, config, hidden_size, eps=1e-5, *args, **kwargs):
        if not config.sequence_parallel:
            return original(cls, config, hidden_size, eps, *args, **kwargs)
        norm_cls = torch.nn.RMSNorm if config.normalization == "RMSNorm" else torch.nn.LayerNorm
        norm = norm_cls(hidden_size, eps=eps)
        for p in norm.parameters():
            p.sequence_parallel = True
        return norm

    torch_norm.WrappedTorchNorm.__new__ = staticmethod(new)


def _distopt_load_without_precision_aware_state() -> None:
    # Loading a `fully_reshardable` DistributedOptimizer checkpoint iterates the *destination* state
    # keys; torch.optim.Adam (the fallback without TE/apex) has a tensor "step" the source lacks
    # -> KeyError: 'step'. Copy what the source provides instead.
    from megatron.core.optimizer import distrib_optimizer

    cls = distrib_optimizer.DistributedOptimizer
    original = cls._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        state = self.optimizer.state[main_param]
        with torch.no_grad():
            for key, value in tensors.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if key == "param":
                    main_param.copy_(value)
                elif key in state:
                    state[key].copy_(value)

    cls._set_main_param_and_optimizer_states = set_states


def _as_cpu_device(device):
    is_cuda = (
        (isinstance(device, int) and not isinstance(device, bool))
        or (isinstance(device, str) and device.startswith("cuda"))
        or (isinstance(device, torch.device) and device.type == "cuda")
    )
    return torch.device("cpu") if is_cuda else device


class CudaToCpuMode(torch.overrides.TorchFunctionMode):
    """Redirects Megatron's literal CUDA allocations and type checks to the CPU.

    Sites: schedules.py ``torch.zeros([], device="cuda")``; optimizer ``torch.tensor(..., device='cuda')``;
    clip_grads / optimizer / distrib_optimizer ``assert param.grad.type() == 'torch.cuda.FloatTensor'``;
    inference ``.cuda()``; grad_scaler; dist_checkpointing exchange_utils. Inside this mode ``device=0``
    means the CPU and ``Tensor.type()`` reports ``torch.cuda.*`` names.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _as_cpu_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func in (torch.Tensor.cuda, torch.Tensor.pin_memory):
            return args[0]
        if func is torch.Tensor.to and len(args) > 1:
            args = (args[0], _as_cpu_device(args[1]), *args[2:])
        out = func(*args, **kwargs)
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and not out.startswith("torch.cuda."):
            out = out.replace("torch.", "torch.cuda.", 1)
        return out


def device_mode():
    """Context for running Megatron: :class:`CudaToCpuMode` on CPU, nothing on GPU."""
    return contextlib.nullcontext() if cuda_available() else CudaToCpuMode()
