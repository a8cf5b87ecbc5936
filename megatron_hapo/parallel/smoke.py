"""A tiny GPT trained on CPU (or GPU) through Megatron-Core's real machinery: the builders.

A small ``GPTModel`` with the local layer spec, wrapped in Megatron's DDP with the distributed optimizer,
trained on a fixed synthetic batch through ``get_forward_backward_func`` at any TP/PP layout. Reused by the
parallel-layout tests; the command that runs it is ``python -m megatron_hapo.cli.smoke``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import megatron_hapo.parallel as hp  # (also applies the import-time CPU patches before megatron)


@dataclass(frozen=True)
class TinyGPTConfig:
    num_layers: int = 4
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int = 2
    ffn_hidden_size: int = 128
    vocab_size: int = 128  # divisible by every TP size the tests use
    seq_length: int = 16
    micro_batch_size: int = 2
    num_microbatches: int = 2


def build_tiny_gpt(cfg: TinyGPTConfig, dtype: torch.dtype = torch.float32):
    """A Megatron ``GPTModel`` (RoPE, SwiGLU, RMSNorm, GQA, no biases) for the current TP/PP rank."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        ffn_hidden_size=cfg.ffn_hidden_size,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=True,  # master weights from the default generator, then sliced per TP rank
        # CPU-incompatible fusions off (they need CUDA kernels or apex):
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        batch_p2p_sync=False,  # the default calls torch.cuda.synchronize() around PP send/recv
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.seq_length,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        position_embedding_type="rope",
        share_embeddings_and_output_weights=False,
    )
    # use_cpu_initialization builds everything on the host: move the model to the compute device (CUDA's
    # current device on a GPU machine, as Megatron's get_model does)
    return model.to(device=hp.compute_device(), dtype=dtype)


def synthetic_batch(cfg: TinyGPTConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """One micro-batch of random tokens, identical on every rank that uses the same seed."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (cfg.micro_batch_size, cfg.seq_length + 1), generator=gen)
    s = cfg.seq_length
    return {
        "tokens": tokens[:, :-1].contiguous(),
        "labels": tokens[:, 1:].contiguous(),
        "loss_mask": torch.ones(cfg.micro_batch_size, s),
        "position_ids": torch.arange(s).expand(cfg.micro_batch_size, s).contiguous(),
        "attention_mask": torch.ones(1, 1, s, s, dtype=torch.bool).triu(1),  # True = masked (future)
    }


def _forward_step(data_iterator, model):
    batch = {k: v.to(hp.compute_device()) for k, v in next(data_iterator).items()}
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])

    def loss_func(per_token_loss):
        mask = batch["loss_mask"]
        loss = (per_token_loss.float() * mask).sum() / mask.sum()
        # the schedule divides the reported value by num_microbatches in place: report a copy
        return loss, {"lm loss": loss.detach().clone()}

    return output, loss_func


def forward_backward(model, batches: list[dict], cfg: TinyGPTConfig, forward_only: bool = False) -> float:
    """Mean LM loss over ``batches`` (one per micro-batch) via Megatron's pipeline schedule.

    Runs backward unless ``forward_only``. The loss exists on the last PP stage only; it is broadcast
    so every rank returns it.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=cfg.seq_length,
        micro_batch_size=cfg.micro_batch_size,
        forward_only=forward_only,
    )
    value = torch.zeros(1, dtype=torch.float64, device=hp.compute_device())  # NCCL: CUDA tensors only
    if ps.is_pipeline_last_stage():
        # each entry is one micro-batch's mean loss (we reported a copy, so it was not rescaled)
        value += sum(float(d["lm loss"]) for d in losses) / len(losses)
    torch.distributed.broadcast(
        value, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group()
    )
    return float(value)


def build_trainable(cfg: TinyGPTConfig, lr: float = 3e-3):
    """Megatron DDP (distributed optimizer) around the tiny GPT, and its Megatron Adam optimizer."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    gpt = build_tiny_gpt(cfg)
    ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=True, grad_reduce_in_fp32=True)
    model = DistributedDataParallel(config=gpt.config, ddp_config=ddp_config, module=gpt)
    gpt.config.finalize_model_grads_func = finalize_model_grads
    gpt.config.no_sync_func = model.no_sync
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=lr, weight_decay=0.0, clip_grad=1.0, use_distributed_optimizer=True
        ),
        [model],
    )
    return model, optimizer


def train_step(model, optimizer, batches, cfg) -> float:
    model.zero_grad_buffer()
    optimizer.zero_grad()
    loss = forward_backward(model, batches, cfg)
    ok, _grad_norm, _ = optimizer.step()
    if not ok:
        raise RuntimeError("optimizer step skipped (non-finite gradients)")
    return loss
