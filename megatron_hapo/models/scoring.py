"""Per-token log-probs and entropies of given sequences under a Megatron policy (forward only).

The old-policy pass of the trainer and the rollout log-prob check both need, for each response token
t, ``log softmax(z_t / T_t)[y_t]`` and the entropy of ``softmax(z_t / T_t)``, with ``z`` the (vocab-
parallel) logits and ``T_t`` the temperature the sampler used for that token. This runs through
Megatron's pipeline schedule, so it works at any TP/PP.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from megatron_hapo.config.schema import sequence_multiple
from megatron_hapo.models.context_parallel import gather_sequence, local_part
from megatron_hapo.models.packing import forward_micro_batch
from megatron_hapo.ops import vocab_parallel_logprob_entropy


@dataclass
class ScoredSequence:
    log_prob: torch.Tensor  # [response_len] fp32
    entropy: torch.Tensor  # [response_len] fp32


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Exclude Megatron's padding rows (ids >= the HF vocab) from the softmax: set them to -inf.

    ``logits``: ``[..., V_padded / tp]``, this TP rank's shard of the vocab.
    """
    from megatron.core import parallel_state as ps

    local = logits.shape[-1]
    first = ps.get_tensor_model_parallel_rank() * local
    valid = max(0, min(local, vocab_size - first))
    if valid < local:
        logits = logits.clone()
        logits[..., valid:] = float("-inf")
    return logits


def score_sequences(
    model,
    prompts: list[list[int]],
    responses: list[list[int]],
    temperatures: list[list[float] | float],
    vocab_size: int,
    micro_batch_size: int = 4,
) -> list[ScoredSequence]:
    """Score ``responses[i]`` given ``prompts[i]`` at per-token temperatures ``temperatures[i]``.

    ``vocab_size`` is the true (HF) vocab: padded columns are excluded. Every rank must call this with
    the same inputs (it runs collectives); every rank returns the same result (broadcast from the
    last pipeline stage).
    """
    from types import SimpleNamespace

    from megatron.core import parallel_state as ps

    from megatron_hapo.parallel import compute_device

    n = len(prompts)
    if not (n == len(responses) == len(temperatures)) or n == 0:
        raise ValueError(
            f"need equally many prompts, responses and temperatures (got {n}, {len(responses)}, {len(temperatures)})"
        )
    config = (model[0] if isinstance(model, (list, tuple)) else model).config
    multiple = sequence_multiple(
        ps.get_tensor_model_parallel_world_size(),
        config.sequence_parallel,
        ps.get_context_parallel_world_size(),
    )
    seq_len = -(-max(len(p) + len(r) for p, r in zip(prompts, responses)) // multiple) * multiple
    n_padded = -(-n // micro_batch_size) * micro_batch_size  # the schedule needs equal micro-batches
    tokens = torch.zeros(n_padded, seq_len, dtype=torch.long)
    targets = torch.zeros(n_padded, seq_len, dtype=torch.long)
    temps = torch.ones(n_padded, seq_len)
    for i, (p, r, t) in enumerate(zip(prompts, responses, temperatures)):
        seq = torch.tensor(p + r)
        tokens[i, : len(seq)] = seq
        targets[i, : len(seq) - 1] = seq[1:]
        # position j predicts token j+1: response token k is predicted at len(p) - 1 + k
        temps[i, len(p) - 1 : len(p) - 1 + len(r)] = torch.as_tensor(t, dtype=torch.float32)
    device = compute_device()
    position_ids = torch.arange(seq_len, device=device).expand(micro_batch_size, seq_len).contiguous()
    batches = [
        SimpleNamespace(
            tokens=tokens[s : s + micro_batch_size].to(device),
            targets=targets[s : s + micro_batch_size].to(device),
            temperature=temps[s : s + micro_batch_size].to(device),
            position_ids=position_ids,
            attention_mask=None,  # causal (Megatron's convention under the causal mask type)
        )
        for s in range(0, n_padded, micro_batch_size)
    ]
    collected = forward_log_prob_entropy(model, batches, vocab_size)
    result = torch.zeros(2, n_padded, seq_len, device=device)
    if ps.is_pipeline_last_stage():
        result = torch.cat(collected, dim=1).float()
    if ps.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.broadcast(
            result,
            src=ps.get_pipeline_model_parallel_last_rank(),
            group=ps.get_pipeline_model_parallel_group(),
        )
    result = result.cpu()
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        span = slice(len(p) - 1, len(p) - 1 + len(r))
        out.append(ScoredSequence(log_prob=result[0, i, span].clone(), entropy=result[1, i, span].clone()))
    return out


def schedule_iterators(micro_batches: Iterator, num_chunks: int) -> Iterator | list[Iterator]:
    """The ``data_iterator`` of Megatron's schedule: ``micro_batches`` itself for one model chunk; under an
    interleaved pipeline, one iterator per chunk over the same micro-batches (each built once and held until
    every chunk has read it: the first chunk runs at most a few micro-batches ahead of the last)."""
    if num_chunks == 1:
        return micro_batches
    return list(itertools.tee(micro_batches, num_chunks))


def forward_log_prob_entropy(
    model, micro_batches, vocab_size: int, num_microbatches: int | None = None, on_output=None
) -> list[torch.Tensor]:
    """Forward-only pass over ``micro_batches`` (a list, or an iterator with ``num_microbatches``) through
    Megatron's schedule, on ``model`` (a model, or the list of an interleaved pipeline's chunks); per
    micro-batch ``[2, b, s]`` (log-prob, entropy of every target at its temperature) on the last pipeline
    stage, an empty list on the other stages. With ``on_output``, the last stage calls
    ``on_output(batch, result)`` per micro-batch instead of keeping the results (so a long pass never holds
    them all) and the list is empty.

    Each micro-batch has ``tokens``, ``targets``, ``temperature``, ``position_ids`` ``[b, s]`` and
    ``attention_mask`` None (causal) or a bool mask (True = masked) (or is a packed row: :class:`~megatron_hapo.trainer.experience.MicroBatch`); their shapes may differ (under PP set ``config.variable_seq_lengths``, which the
    trainer's Policy does). Every rank of the model-parallel group calls this with the same batches.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    tp_group = ps.get_tensor_model_parallel_group() if ps.get_tensor_model_parallel_world_size() > 1 else None

    def forward_step(data_iterator, model_chunk):
        batch = next(data_iterator)
        part = local_part(batch)  # this CP rank's tokens of every sequence (the batch itself without CP)
        logits = forward_micro_batch(model_chunk, part)  # packed rows too (models/packing.py)

        def collect(output, non_loss_data=False):
            # in the model's dtype, as the update feeds the loss: the op computes in fp32 inside, so an fp32
            # copy of bf16 logits would only cost 2x their memory (what the dry-run plan does not count)
            local = mask_padded_vocab(output, vocab_size)  # [b, s, V/tp]
            lp, ent = vocab_parallel_logprob_entropy(
                local.reshape(-1, local.shape[-1]),
                part.targets.reshape(-1),
                temperature=part.temperature.reshape(-1),
                tp_group=tp_group,
            )
            result = torch.stack([lp.view(part.tokens.shape), ent.view(part.tokens.shape)])
            result = gather_sequence(result, dim=2)  # [2, b, s]: every CP rank's tokens, in order
            if on_output is None:
                return result
            on_output(batch, result)
            return result.new_zeros(())

        return logits, collect

    shape = (
        1,
        1,
    )  # (rows, seq): with varying shapes config.variable_seq_lengths makes the schedule ignore it
    if num_microbatches is None:
        num_microbatches, shape = len(micro_batches), tuple(micro_batches[0].tokens.shape)
    with torch.no_grad():
        chunks = list(model) if isinstance(model, (list, tuple)) else [model]
        collected = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=schedule_iterators(iter(micro_batches), len(chunks)),
            model=chunks,
            num_microbatches=num_microbatches,
            seq_length=shape[1],
            micro_batch_size=shape[0],
            forward_only=True,
            collect_non_loss_data=True,
        )
    return list(collected) if ps.is_pipeline_last_stage() and on_output is None else []
