"""Numerical check of a conversion: Megatron logits vs the HF model's on the same random tokens.

``megatron_logits`` runs the model through Megatron's forward-only pipeline schedule (any TP/PP) and
gathers the vocab-parallel logits; ``compare_with_hf`` runs the HF reference on one rank (the first
rank of the last pipeline stage) and reduces the max |difference| to every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_hapo.models.params import as_chunks
from megatron_hapo.parallel import compute_device

DEFAULT_ATOL = 1e-4  # fp32 on CPU matches to ~1e-6; bf16 needs a looser bound


@dataclass(frozen=True)
class LogitComparison:
    """Result of :func:`compare_with_hf`: max |HF - Megatron| over a [batch, seq, vocab] logit tensor."""

    max_abs_diff: float
    atol: float
    batch: int
    seq_len: int
    vocab: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < self.atol

    def describe(self) -> str:
        verdict = "OK, within" if self.ok else "FAILED, exceeds"
        return (
            f"max |logit diff| = {self.max_abs_diff:.3e} over [{self.batch}, {self.seq_len}, {self.vocab}] logits "
            f"({verdict} tolerance {self.atol:.1e})"
        )


def random_tokens(vocab_size: int, batch: int = 2, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    """[batch, seq_len] int64 token ids in [0, vocab_size), identical on every rank for the same seed."""
    return torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def megatron_logits(model, tokens: torch.Tensor) -> torch.Tensor | None:
    """Logits [batch, seq, padded_vocab] (TP-gathered, on CPU) on last-stage ranks; None on other stages.

    Collective over the model-parallel group; ``tokens`` [batch, seq] must be the same on all its ranks.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    (chunk,) = as_chunks(model)  # virtual pipeline chunks are not needed for verification
    b, s = tokens.shape
    device = next(chunk.parameters()).device
    batch = {
        "tokens": tokens.to(device),
        "position_ids": torch.arange(s, device=device).expand(b, s).contiguous(),
        "attention_mask": torch.ones(1, 1, s, s, dtype=torch.bool, device=device).triu(1),  # True = masked
    }

    def forward_step(data_iterator, m):
        data = next(data_iterator)
        out = m(data["tokens"], data["position_ids"], data["attention_mask"])
        # collect_non_loss_data: the schedule stores what this returns (the logits) on the last stage
        return out, lambda output, non_loss_data=True: output

    was_training = chunk.training
    chunk.eval()
    with torch.no_grad():
        store = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter([batch]),
            model=[model],
            num_microbatches=1,
            seq_length=s,
            micro_batch_size=b,
            forward_only=True,
            collect_non_loss_data=True,
        )
    chunk.train(was_training)
    if not ps.is_pipeline_last_stage():
        return None
    local = store[0].contiguous()  # [b, s, padded_vocab / tp]
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
        local = torch.cat(parts, dim=-1)
    return local.float().cpu()


def hf_logits(
    hf_dir: str | os.PathLike, tokens: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Logits [batch, seq, vocab] of the HF model in ``hf_dir`` (eager attention, on GPU if present)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation="eager")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device).eval()
    with torch.no_grad():
        out = model(tokens.to(device)).logits.float().cpu()
    del model
    return out


def compare_with_hf(
    model,
    hf_dir: str | os.PathLike,
    *,
    batch: int = 2,
    seq_len: int = 16,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
) -> LogitComparison:
    """Max |HF logits - Megatron logits| on random tokens; collective, every rank gets the same result."""
    from megatron.core import parallel_state as ps

    (chunk,) = as_chunks(model)
    vocab = chunk.hapo_arch.vocab_size
    tokens = random_tokens(vocab, batch, seq_len, seed)
    ours = megatron_logits(model, tokens)
    # on the collective's device: NCCL (GPU runs) reduces CUDA tensors only
    diff = torch.zeros(1, dtype=torch.float64, device=compute_device())
    reference_rank = (
        ps.is_pipeline_last_stage()
        and ps.get_tensor_model_parallel_rank() == 0
        and ps.get_data_parallel_rank() == 0
    )
    if reference_rank:
        ref = hf_logits(hf_dir, tokens)
        diff[0] = (ref - ours[..., :vocab]).abs().max().double().to(diff.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return LogitComparison(float(diff[0]), atol, batch, seq_len, vocab)
