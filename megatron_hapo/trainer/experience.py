"""One step's training data on one data-parallel rank, built once, on the compute device once.

The old-policy pass, the entropy statistics, the batch metrics and the update all read (and the old pass
fills in) the same flat tensors; a micro-batch is a gathered ``[rows, seq]`` view of them through an
index (:meth:`Experience.micro_batch`), so nothing is padded, un-padded and re-padded along the way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from megatron_hapo.rollout import RolloutSample
from megatron_hapo.trainer.batch import token_tensor

_PER_TOKEN = (
    "tokens", "targets", "mask", "temperature", "rollout_log_prob", "advantages", "old_log_prob", "entropy",
)  # fmt: skip


@dataclass
class MicroBatch:
    """A ``[b, s]`` view of some of an Experience's sequences, right-padded to ``s``.

    Position j of row i holds input token j and predicts token j+1 (``targets``); ``mask`` is 1 exactly at
    response-token targets. ``index [b, s]`` maps every slot to its flat position (padding: the
    Experience's pad slot), and ``attention_mask`` is None: causal, Megatron's convention under its causal mask
    type (a fused attention then needs no mask tensor: ``SDPAttention``'s flash kernel, TE's). The per-token
    fields are those of :class:`Experience`.

    Packed (``b == 1``, several sequences back to back; trainer/batching.py): ``position_ids`` restart at 0
    at each sequence, ``segments [n, L]`` holds each sequence's slots (flat positions in the row, -1 past
    its end; the loss aggregates per sequence through it), and either ``attention_mask [1, 1, s, s]`` is
    block-diagonal causal (packing "mask", True = masked: attention never crosses a sequence boundary) or
    it is None and ``packed_seq_params`` (Megatron's ``PackedSeqParams``, THD with ``cu_seqlens``) tells
    Transformer Engine's attention the boundaries (packing "thd"). Trailing padding is a sequence of its own.
    """

    index: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    tokens: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    temperature: torch.Tensor
    rollout_log_prob: torch.Tensor
    advantages: torch.Tensor
    old_log_prob: torch.Tensor
    entropy: torch.Tensor
    segments: torch.Tensor | None = None
    packed_seq_params: Any = None
    routed_experts: torch.Tensor | None = None  # [b, s, MoE layers, top_k] (routing replay; see Experience)

    @property
    def packing(self) -> str | None:
        """None (one sequence per row), "mask" or "thd" (see the class docstring)."""
        if self.segments is None:
            return None
        return "thd" if self.packed_seq_params is not None else "mask"


@dataclass
class Experience:
    """This rank's responses of a step, flat: sequence i (prompt + response, L_i = P_i + R_i tokens)
    occupies positions ``offsets[i] : offsets[i+1]``; one trailing *pad slot* (position T = offsets[-1])
    holds token 0, mask 0, and is where micro-batch padding points.

    Per token, ``[T + 1]``:
      tokens int64, targets int64 (the next token of the same sequence; 0 at each sequence's last position),
      mask float32 (1 at response-token targets: position offsets[i] + P_i - 1 + k for response token k),
      temperature float32 (the ratio's T_t; 1 off the mask), rollout_log_prob float32 (behaviour log-probs
      from the engine; 0 off the mask), advantages float32 (A_i on the mask, 0 elsewhere), old_log_prob and
      entropy float32 (log π_old and entropy at T_t, filled by the old-policy pass).
    Per response, ``[N]``: offsets ``[N + 1]`` int64, prompt_lens, response_lens, group_ids int64;
      step_index (position in the step's batch), weight_versions (the engine's version per response).
    Routing replay (``algorithm.rollout_routing_replay``): ``routed_experts [T + 1, MoE layers, top_k]`` int16,
      the experts the engine routed each token to (models/routing_replay.py); None otherwise.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    temperature: torch.Tensor
    rollout_log_prob: torch.Tensor
    advantages: torch.Tensor
    old_log_prob: torch.Tensor
    entropy: torch.Tensor
    offsets: torch.Tensor
    prompt_lens: torch.Tensor
    response_lens: torch.Tensor
    group_ids: torch.Tensor
    step_index: list[int]
    weight_versions: list[str]
    routed_experts: torch.Tensor | None = None

    @property
    def pad_slot(self) -> int:
        return self.tokens.numel() - 1

    @property
    def seq_lens(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def build(
        cls,
        samples: list[RolloutSample],
        temperatures: list[list[float]],
        advantages: list[float],
        group_ids: list[int],
        step_index: list[int],
        device: torch.device | str = "cpu",
        routing: tuple[int, int] | None = None,
    ) -> Experience:
        """From this rank's responses (``step_index[i]`` = position of ``samples[i]`` in the step), their
        ratio temperatures (one per response token) and their per-response advantages; moved to ``device``.
        ``routing``: (MoE layers, top_k) of a routing-replay run, whose samples carry ``routed_experts``."""
        n = len(samples)
        if not (n == len(temperatures) == len(advantages) == len(group_ids) == len(step_index)):
            raise ValueError(
                f"Experience.build: {n} samples but {len(temperatures)} temperature lists, "
                f"{len(advantages)} advantages, {len(group_ids)} group ids, {len(step_index)} step indices"
            )
        p_lens = [len(s.prompt_ids) for s in samples]
        r_lens = [len(s.response_ids) for s in samples]
        offsets = torch.zeros(n + 1, dtype=torch.long)
        offsets[1:] = torch.tensor([p + r for p, r in zip(p_lens, r_lens)], dtype=torch.long).cumsum(0)
        total = int(offsets[-1])
        seqs = [
            torch.cat([token_tensor(s.prompt_ids, torch.long), token_tensor(s.response_ids, torch.long)])
            for s in samples
        ]
        tokens = torch.zeros(total + 1, dtype=torch.long)
        targets = torch.zeros(total + 1, dtype=torch.long)
        if n:
            tokens[:total] = torch.cat(seqs)
            # next token within each sequence; the last position of each sequence keeps target 0
            nxt = torch.cat([torch.cat([s[1:], s.new_zeros(1)]) for s in seqs])
            targets[:total] = nxt
        # response token k of sequence i is predicted at offsets[i] + P_i - 1 + k
        starts = [int(o) + p - 1 for o, p in zip(offsets[:-1], p_lens)]
        resp_pos = torch.cat(
            [torch.arange(a, a + r) for a, r in zip(starts, r_lens)] or [torch.zeros(0)]
        ).long()
        mask = torch.zeros(total + 1)
        mask[resp_pos] = 1.0
        temps = torch.ones(total + 1)
        rollout = torch.zeros(total + 1)
        adv = torch.zeros(total + 1)
        if resp_pos.numel():
            temps[resp_pos] = torch.cat([token_tensor(ts, torch.float32) for ts in temperatures])
            rollout[resp_pos] = torch.cat([token_tensor(s.logprobs, torch.float32) for s in samples])
            adv[resp_pos] = torch.repeat_interleave(
                torch.tensor(advantages, dtype=torch.float32), torch.tensor(r_lens)
            )
        exp = cls(
            tokens, targets, mask, temps, rollout, adv, torch.zeros(total + 1), torch.zeros(total + 1),
            offsets, torch.tensor(p_lens), torch.tensor(r_lens), torch.tensor(group_ids, dtype=torch.long),
            list(step_index), [s.weight_version for s in samples],
            None if routing is None else _routed_experts(samples, *routing),
        )  # fmt: skip
        return exp.to(device)

    def to(self, device) -> Experience:
        moved = {
            k: getattr(self, k).to(device)
            for k in (*_PER_TOKEN, "offsets", "prompt_lens", "response_lens", "group_ids")
        }
        exp = Experience(
            **moved,
            step_index=self.step_index,
            weight_versions=self.weight_versions,
            routed_experts=None if self.routed_experts is None else self.routed_experts.to(device),
        )
        # the cached properties, carried: no device read
        exp.__dict__["host_offsets"] = self.host_offsets
        exp.__dict__["host_response_lens"] = self.host_response_lens
        return exp

    @functools.cached_property
    def host_offsets(self) -> list[int]:
        """``offsets`` on the host, read once: micro-batch indices are built from it without a device sync."""
        return self.offsets.tolist()

    @functools.cached_property
    def host_response_lens(self) -> list[int]:
        """``response_lens`` on the host, read once (the loss normaliser counts from it without a sync)."""
        return self.response_lens.tolist()

    def micro_batch(self, rows: list[int] | tuple[int, ...], seq_len: int) -> MicroBatch:
        """Rows ``rows`` (indices into this Experience) as a ``[len(rows), seq_len]`` micro-batch; no rows =
        one all-padding row (zero loss). ``seq_len`` must hold the longest of them.

        The index is built on the host and copied once, without blocking (like every shape and check here,
        so that the host can queue the next micro-batch while the device still runs this one)."""
        dev = self.tokens.device
        offs = self.host_offsets
        lens = [offs[i + 1] - offs[i] for i in rows]
        if lens and max(lens) > seq_len:
            raise ValueError(f"a sequence of {max(lens)} tokens does not fit a micro-batch of {seq_len}")
        ar = torch.arange(seq_len)
        if rows:
            starts = torch.tensor([offs[i] for i in rows])
            index = torch.where(ar < torch.tensor(lens)[:, None], starts[:, None] + ar, self.pad_slot)
        else:
            index = torch.full((1, seq_len), self.pad_slot, dtype=torch.long)
        (index,) = _to_device(dev, index)
        b = index.shape[0]
        fields = self._gather(index)
        positions = torch.arange(seq_len, device=dev).expand(b, seq_len).contiguous()
        return MicroBatch(index, positions, None, **fields)  # None: causal

    def packed_micro_batch(self, rows: list[int] | tuple[int, ...], seq_len: int, packing: str) -> MicroBatch:
        """Rows ``rows`` back to back in ONE row of ``seq_len`` tokens (see :class:`MicroBatch`), for
        ``packing`` "mask" (block-diagonal causal mask) or "thd" (``PackedSeqParams``). Built on the host
        like :meth:`micro_batch`; only the ``[s, s]`` mask is built on the device."""
        if packing not in ("mask", "thd"):
            raise ValueError(f"packing must be 'mask' or 'thd', got {packing!r}")
        if not rows:
            return self.micro_batch(rows, seq_len)
        dev = self.tokens.device
        offs = self.host_offsets
        lens = [offs[i + 1] - offs[i] for i in rows]
        total = sum(lens)
        if total > seq_len:
            raise ValueError(f"{total} packed tokens do not fit a row of {seq_len}")
        # segment lengths of the row: the sequences, then the trailing padding as a sequence of its own
        seg_lens = torch.tensor(lens + ([seq_len - total] if total < seq_len else []))
        seg_id = torch.repeat_interleave(torch.arange(seg_lens.numel()), seg_lens)  # [s]
        starts = torch.cumsum(seg_lens, 0) - seg_lens  # [segments]
        pos = torch.arange(seq_len) - starts[seg_id]  # position within its own sequence
        row_starts = torch.tensor([offs[i] for i in rows])
        index = torch.where(
            seg_id < len(rows), row_starts[seg_id.clamp_max(len(rows) - 1)] + pos, self.pad_slot
        )[None]  # [1, s]
        ar = torch.arange(max(lens))
        segments = torch.where(ar < torch.tensor(lens)[:, None], starts[: len(rows), None] + ar, -1)
        cu = torch.zeros(seg_lens.numel() + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(seg_lens, 0).to(torch.int32)
        index, pos, segments, seg_id, cu = _to_device(
            dev, index, pos[None].contiguous(), segments, seg_id, cu
        )
        fields = self._gather(index)
        if packing == "mask":
            q = torch.arange(seq_len, device=dev)
            # True = masked (Megatron's convention): keys of other sequences, and the future
            mask = ((seg_id[:, None] != seg_id[None, :]) | (q[None, :] > q[:, None]))[None, None]
            return MicroBatch(index, pos, mask, **fields, segments=segments)
        from megatron.core.packed_seq_params import PackedSeqParams

        longest = int(seg_lens.max())
        params = PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest, max_seqlen_kv=longest
        )
        return MicroBatch(index, pos, None, **fields, segments=segments, packed_seq_params=params)

    def _gather(self, index: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The per-token fields of a micro-batch's slots ``index [b, s]``."""
        fields = {k: getattr(self, k)[index] for k in _PER_TOKEN}
        fields["routed_experts"] = None if self.routed_experts is None else self.routed_experts[index]
        return fields

    def scatter(self, name: str, mb: MicroBatch, values: torch.Tensor) -> None:
        """Write ``values [b, s]`` of micro-batch ``mb`` into the flat field ``name`` (padding dropped: the
        pad slot is written its own value, so no boolean indexing, which would wait for the device)."""
        field = getattr(self, name)
        keep = field[self.pad_slot].clone()
        field[mb.index] = torch.where(mb.index != self.pad_slot, values.to(field.dtype), keep)


def _routed_experts(samples: list[RolloutSample], layers: int, top_k: int) -> torch.Tensor:
    """``[T + 1, layers, top_k]`` int16 from the samples' ``routed_experts`` (rollout/parse.py: every token but
    each sequence's last). The last token of a sequence, which the engine never ran, takes the experts of the
    token before it, and the pad slot experts 0..top_k-1: their outputs are never trained on (causal
    attention: a token's experts change only its own and later positions)."""
    parts = []
    for s in samples:
        seq_len = len(s.prompt_ids) + len(s.response_ids)
        ids = s.routed_experts
        if ids is None or tuple(ids.shape) != (seq_len - 1, layers * top_k):
            got = "none" if ids is None else f"shape {tuple(ids.shape)}"
            raise ValueError(
                f"routing replay: the response to prompt {s.prompt_index} (sample {s.sample_index}, "
                f"{seq_len} tokens) carries {got} routed experts, expected ({seq_len - 1}, {layers} MoE "
                f"layers x top-{top_k}): is the rollout engine serving this model?"
            )
        routed = torch.from_numpy(ids).to(torch.int16).view(seq_len - 1, layers, top_k)
        parts.append(torch.cat([routed, routed[-1:]]))
    parts.append(torch.arange(top_k, dtype=torch.int16).expand(1, layers, top_k))
    return torch.cat(parts)


def _to_device(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Host tensors -> ``device``; to a GPU from pinned memory without blocking the host (a copy from
    pageable memory waits for the device's queue to drain first)."""
    if device.type != "cuda":
        return tuple(t.to(device) for t in tensors)
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)
