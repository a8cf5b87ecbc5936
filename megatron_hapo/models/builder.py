"""HF config -> Megatron ``TransformerConfig``, layer spec and ``GPTModel`` for the current TP/PP rank.

Import ``megatron_hapo.parallel`` (done here) before Megatron, and call the builder after
``megatron_hapo.parallel.initialize_model_parallel``: TP/PP sizes and pre/post-process flags come
from Megatron's ``parallel_state``. On CPU wrap the call in ``megatron_hapo.parallel.device_mode()``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

import megatron_hapo.parallel as hp  # (also applies the CPU import patches before megatron)
from megatron_hapo.models.errors import ConversionError, ParallelLayoutError
from megatron_hapo.models.hf_config import DEFAULT_VOCAB_DIVISOR, ModelArch, load_arch
from megatron_hapo.models.precision import check_fp8_spec
from megatron_hapo.parallel import cpu_compat

logger = logging.getLogger(__name__)

SpecChoice = Literal["auto", "local", "te"]
LocalAttention = Literal["auto", "sdpa", "unfused"]
LOCAL_ATTENTIONS = get_args(LocalAttention)


def transformer_engine_status() -> tuple[bool, str]:
    """(usable, reason): Transformer Engine importable *and* a CUDA device present.

    Guarded with ``except Exception``: a half-installed TE raises ``RuntimeError`` (not ImportError)
    at import.
    """
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _te  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"transformer_engine is not usable ({type(e).__name__}: {e})"
    return True, "transformer_engine importable and CUDA present"


def uses_te_spec(spec: SpecChoice) -> bool:
    """Whether ``spec`` resolves to Transformer Engine's layer spec here (raises if "te" is not usable)."""
    if spec not in ("auto", "local", "te"):
        raise ValueError(f"spec must be 'auto', 'local' or 'te', got {spec!r}")
    usable, reason = transformer_engine_status()
    if spec == "te" and not usable:
        raise ConversionError(f"spec='te' asked for, but {reason}; use spec='local' (or 'auto')")
    return spec == "te" or (spec == "auto" and usable)


def resolve_local_attention(choice: LocalAttention, te_spec: bool, cp: int = 1) -> str | None:
    """The core attention of the local spec, "sdpa" or "unfused" (None with TE's spec, which has its own).

    "auto": "sdpa" on CUDA (PyTorch's flash / memory-efficient kernels: no s x s scores kept) and under
    context parallelism (``cp`` > 1, which only ``SDPAttention`` implements), else "unfused" on CPU, whose
    tests and goldens were written against Megatron's ``DotProductAttention``. An explicit choice with TE's
    spec raises: nothing would read it; so does "unfused" under CP."""
    if choice not in LOCAL_ATTENTIONS:
        raise ValueError(f"local_attention must be one of {LOCAL_ATTENTIONS}, got {choice!r}")
    if te_spec:
        if choice != "auto":
            raise ConversionError(
                f"model.local_attention={choice} applies to the local layer spec, but this model is built with "
                "Transformer Engine's (fused attention of its own); set model.local_attention=auto, or "
                "model.layer_spec=local"
            )
        return None
    if choice == "auto":
        return "sdpa" if cpu_compat.cuda_available() or cp > 1 else "unfused"
    if choice == "unfused" and cp > 1:
        raise ConversionError(
            f"model.local_attention=unfused (Megatron's DotProductAttention) has no context parallelism "
            f"(CP={cp}); use model.local_attention=sdpa (or auto)"
        )
    return choice


def layer_spec(arch: ModelArch, spec: SpecChoice = "auto", local_attention: LocalAttention = "auto"):
    """The GPT layer spec for ``arch``: TE's when ``spec`` is "te" (or "auto" and TE is usable), else local,
    whose core attention is :func:`resolve_local_attention`'s (``SDPAttention`` or Megatron's unfused)."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    use_te = uses_te_spec(spec)
    from megatron.core import parallel_state as ps

    cp = ps.get_context_parallel_world_size() if ps.model_parallel_is_initialized() else 1
    attention = resolve_local_attention(local_attention, use_te, cp)
    logger.info(
        "GPT layer spec: %s (%s)",
        "transformer_engine" if use_te else f"local, {attention} attention",
        transformer_engine_status()[1],
    )
    # a mixture of experts runs one SwiGLU module per expert (SequentialMLP); grouped GEMM is not mapped yet
    experts = dict(num_experts=arch.moe.num_experts, moe_grouped_gemm=False) if arch.moe else {}
    if use_te:
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm, **experts)
    local = get_gpt_layer_local_spec(qk_layernorm=arch.qk_norm, normalization="RMSNorm", **experts)
    if attention == "sdpa":
        from megatron_hapo.models.sdpa_attention import SDPAttention

        local.submodules.self_attention.submodules.core_attention = SDPAttention
    return local


def transformer_config(arch: ModelArch, *, params_dtype: torch.dtype = torch.float32, **overrides: Any):
    """Megatron ``TransformerConfig`` equivalent to ``arch`` at the current TP/PP sizes.

    ``overrides`` are passed to ``TransformerConfig`` last (recompute, sequence_parallel, ...).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.transformer import TransformerConfig

    kwargs: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,  # Qwen3: head_dim != hidden / heads
        ffn_hidden_size=arch.ffn_hidden_size,
        gated_linear_unit=True,  # SwiGLU: fc1 = [gate; up]
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=arch.initializer_range,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        # interleaved pipeline: which layers a chunk builds depends on it (get_transformer_layer_offset)
        virtual_pipeline_model_parallel_size=ps.get_virtual_pipeline_model_parallel_world_size(),
        # context parallelism: the rotary table is sliced per CP rank, SDPAttention gathers K and V
        context_parallel_size=ps.get_context_parallel_world_size(),
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        # fusions that need CUDA kernels / apex stay off (they are off by default; explicit for CPU)
        bias_dropout_fusion=False,
        # SwiGLU as one autograd function (Megatron's bias_swiglu_impl, Megatron-LM's --bias-swiglu-fusion
        # default): it keeps only fc1's output [s, b, 2F] for the backward, which recomputes the gate. The
        # plain expression keeps silu(gate), the gated half again and their product besides: 10 F bytes per
        # token and layer instead of 6 F (models/activation_memory.py measures it). On the GPU Megatron
        # compiles it (jit_fuser); with TORCHDYNAMO_DISABLE, as on the CPU, it runs eagerly.
        bias_activation_fusion=True,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
    )
    if arch.moe is not None:
        kwargs.update(moe_config(arch))
    if not cpu_compat.cuda_available():
        kwargs.update(
            use_cpu_initialization=True,  # build on the host; TP ranks slice the same master weights
            batch_p2p_sync=False,  # the default calls torch.cuda.synchronize() around PP send/recv
        )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def moe_config(arch: ModelArch) -> dict[str, Any]:
    """The ``TransformerConfig`` fields of ``arch``'s mixture of experts (Qwen3-MoE's router and experts).

    Megatron's default router takes the top k of the logits, then a softmax over those k: that is HF's
    softmax over all experts renormalised over the top k (``norm_topk_prob``). Without renormalisation the
    softmax comes first (``moe_router_pre_softmax``). The update has no load-balancing loss: RL fine-tunes
    the policy through HAPO's loss only. Dropless: every token reaches its k experts.
    """
    from megatron.core import parallel_state as ps

    moe = arch.moe
    return dict(
        expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
        num_moe_experts=moe.num_experts,
        moe_router_topk=moe.top_k,
        moe_ffn_hidden_size=moe.expert_ffn_hidden_size,
        moe_router_score_function="softmax",
        moe_router_pre_softmax=not moe.norm_topk_prob,
        moe_router_dtype="fp32",  # the softmax and the weighted sum of experts in fp32 under bf16
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_token_dispatcher_type="alltoall",
        moe_grouped_gemm=False,
    )


def build_gpt_model(
    source: Any,
    *,
    params_dtype: torch.dtype = torch.float32,
    spec: SpecChoice = "auto",
    local_attention: LocalAttention = "auto",
    padded_vocab_size: int | None = None,
    make_vocab_size_divisible_by: int = DEFAULT_VOCAB_DIVISOR,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    vp_stage: int | None = None,
    perform_initialization: bool = True,
    config_overrides: dict[str, Any] | None = None,
    hf_overrides: dict[str, Any] | None = None,
):
    """Build this rank's ``GPTModel`` for the HF model described by ``source``.

    ``source``: a model directory, a config.json, a dict, a transformers config or a ``ModelArch``.
    ``padded_vocab_size``: the embedding/output row count; default ``arch.padded_vocab_size(tp,
    make_vocab_size_divisible_by)``. Pass the value a checkpoint was written with to load it at another
    TP (``mcore_io.checkpoint_padded_vocab``). ``local_attention``: the local spec's core attention
    (:func:`resolve_local_attention`). ``vp_stage``: which of this rank's chunks to build under an
    interleaved pipeline (required then; its layers come from Megatron's layer offset).
    ``perform_initialization=False`` skips random init (for weights about to be overwritten). ``hf_overrides``: HF config fields set on top of ``source``'s
    (``model.override_config``); ``config_overrides``: Megatron ``TransformerConfig`` fields. The returned
    model carries ``hapo_arch`` (the ``ModelArch``) for ``export_hf_weights``; its ``vocab_size`` attribute
    is the padded vocab. Every parameter and buffer is on ``megatron_hapo.parallel.compute_device()`` in
    ``params_dtype``.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    arch = load_arch(source, hf_overrides)
    tp = ps.get_tensor_model_parallel_world_size()
    pp = ps.get_pipeline_model_parallel_world_size()
    vp = ps.get_virtual_pipeline_model_parallel_world_size()
    arch.check_layout(tp, pp, vp)
    if vp is not None and vp_stage is None:
        raise ValueError(
            f"an interleaved pipeline ({vp} chunks per stage) builds one model per chunk: pass vp_stage "
            f"in 0..{vp - 1} (trainer/policy.py builds them all)"
        )
    padded = padded_vocab_size or arch.padded_vocab_size(tp, make_vocab_size_divisible_by)
    if padded < arch.vocab_size or padded % tp:
        raise ParallelLayoutError(
            f"padded vocab {padded} must be >= the HF vocab {arch.vocab_size} and divisible by TP={tp}; "
            f"re-convert the checkpoint with --tp {tp}"
        )
    overrides = {"perform_initialization": perform_initialization, **(config_overrides or {})}
    # FP8 (fp8_config_overrides) only exists in TE's layers: refuse it before building with the local spec,
    # where Megatron's fp8 context is a no-op and the run would silently be bf16.
    check_fp8_spec(overrides.get("fp8"), uses_te_spec(spec))
    config = transformer_config(arch, params_dtype=params_dtype, **overrides)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(arch, spec, local_attention),
        vocab_size=padded,
        max_sequence_length=arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=arch.rope_theta,
        rope_scaling=arch.rope_scaling is not None,
        rope_scaling_factor=arch.rope_scaling.factor if arch.rope_scaling else 8.0,
        seq_len_interpolation_factor=arch.linear_rope_factor,
        vp_stage=vp_stage,
    )
    if arch.rope_scaling is not None:
        _apply_llama3_rope(model, arch)
    model.hapo_arch = arch
    # Megatron builds its tensor-parallel layers on the current CUDA device, but modules it takes from torch
    # (WrappedTorchNorm -> torch.nn.RMSNorm) land on the default device, the CPU. Move the whole model, as
    # Megatron's own get_model does (model.cuda(torch.cuda.current_device())), then cast to params_dtype.
    return model.to(device=hp.compute_device(), dtype=params_dtype)


def _apply_llama3_rope(model, arch: ModelArch) -> None:
    # GPTModel applies llama3 scaling with hard-coded low_freq_factor=1, high_freq_factor=4 and
    # original_max_position_embeddings=8192 (RotaryEmbedding._apply_scaling defaults). Recompute the
    # frequencies with the HF config's values so any llama3-style config matches HF exactly.
    s = arch.rope_scaling
    rope = model.rotary_pos_emb
    device = rope.inv_freq.device
    dim = arch.head_dim
    base = 1.0 / (arch.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    rope.inv_freq = rope._apply_scaling(
        base,
        factor=s.factor,
        low_freq_factor=s.low_freq_factor,
        high_freq_factor=s.high_freq_factor,
        original_max_position_embeddings=s.original_max_position_embeddings,
    )
