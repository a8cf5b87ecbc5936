"""Per-row HAPO parameters that follow SGLang's running batch.

SGLang copies ``sampling_params.custom_params`` into ``SamplingBatchInfo`` only when custom logit
processors are enabled, which HAPO must not need (they execute client-sent code). So the plugin keeps
its own per-row tensors on the batch's ``SamplingBatchInfo`` and keeps them in step with it through the
override points SGLang provides for exactly this (``adjusted_from_schedule_batch`` /
``adjusted_merge_batch`` / ``adjusted_filter_batch``), plus ``copy_for_forward``, whose
``dataclasses.replace`` would otherwise drop a non-field attribute before the sampler sees it.

``install_batch_hooks()`` registers those four AFTER-hooks with SGLang's ``HookRegistry``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from sglang_ext.params import HapoParamsError, RowParams, parse_row

logger = logging.getLogger(__name__)

ATTR = "hapo_rows"  # attribute name on SamplingBatchInfo
_NEUTRAL_STATS = (0.0, 1.0, 0.0, 0.0)  # placeholder for rows without statistics; masked out by the sampler


@dataclass
class HapoRows:
    """HAPO parameters of the B rows of one batch.

    Host lists make "is any row enabled" a Python check (no device sync per step); device tensors feed
    the sampler: ``tau [B]``, ``stats [B, 4]`` (pivot, sigma, pos_scale, neg_scale), ``adaptive [B]``
    (enabled and has statistics), ``enabled [B]``, and ``seed [B]`` int64 or None when no row of the
    batch asked for a ``sampling_seed`` (rows without one then get a fresh random seed, so they stay
    random while the batch is sampled through SGLang's seeded path).
    """

    enabled_host: list[bool]
    adaptive_host: list[bool]
    enabled: torch.Tensor
    adaptive: torch.Tensor
    tau: torch.Tensor
    stats: torch.Tensor
    seed: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.enabled_host)

    @property
    def any_enabled(self) -> bool:
        return any(self.enabled_host)

    @property
    def any_adaptive(self) -> bool:
        return any(self.adaptive_host)

    @property
    def needed(self) -> bool:
        """Whether the batch needs the rows at all (else the sampler takes the stock path)."""
        return self.any_enabled or self.seed is not None

    @classmethod
    def from_params(cls, rows: list[RowParams], device) -> HapoRows:
        pin = str(device).startswith("cuda")  # pinned host buffers make the copies below asynchronous

        def to_dev(values, dtype):
            return torch.tensor(values, dtype=dtype, pin_memory=pin).to(device, non_blocking=True)

        enabled = [r.enabled for r in rows]
        adaptive = [r.enabled and r.stats is not None for r in rows]
        return cls(
            enabled_host=enabled,
            adaptive_host=adaptive,
            enabled=to_dev(enabled, torch.bool),
            adaptive=to_dev(adaptive, torch.bool),
            tau=to_dev([r.tau for r in rows], torch.float32),
            stats=to_dev([r.stats or _NEUTRAL_STATS for r in rows], torch.float32).view(len(rows), 4),
            seed=(
                to_dev([_random_seed() if r.seed is None else r.seed for r in rows], torch.int64)
                if any(r.seed is not None for r in rows)
                else None
            ),
        )

    def filtered(self, keep: list[int], keep_device: torch.Tensor) -> HapoRows:
        return HapoRows(
            enabled_host=[self.enabled_host[i] for i in keep],
            adaptive_host=[self.adaptive_host[i] for i in keep],
            enabled=self.enabled[keep_device],
            adaptive=self.adaptive[keep_device],
            tau=self.tau[keep_device],
            stats=self.stats[keep_device],
            seed=None if self.seed is None else self.seed[keep_device],
        )

    def concat(self, other: HapoRows) -> HapoRows:
        return HapoRows(
            enabled_host=self.enabled_host + other.enabled_host,
            adaptive_host=self.adaptive_host + other.adaptive_host,
            enabled=torch.cat([self.enabled, other.enabled]),
            adaptive=torch.cat([self.adaptive, other.adaptive]),
            tau=torch.cat([self.tau, other.tau]),
            stats=torch.cat([self.stats, other.stats]),
            seed=_cat_seeds(self, other),
        )


def _random_seed() -> int:
    # from the scheduler's torch generator (seeded by --random-seed), like stock multinomial sampling
    return int(torch.randint(0, 2**62, ()).item())


def _cat_seeds(a: HapoRows, b: HapoRows) -> torch.Tensor | None:
    if a.seed is None and b.seed is None:
        return None
    device = (a.seed if a.seed is not None else b.seed).device
    parts = [
        rows.seed if rows.seed is not None else torch.tensor([_random_seed() for _ in range(len(rows))])
        for rows in (a, b)
    ]
    return torch.cat([p.to(device) for p in parts])


def parse_requests(reqs) -> list[RowParams]:
    """Parse each request's ``custom_params``. The tokenizer-side check (``validate_sampling_params``)
    rejects malformed ones before they get here; a row that still fails is logged as an error and sampled
    stock rather than crashing the scheduler, which would abort every request on the server."""
    rows = []
    for req in reqs:
        try:
            row = parse_row(req.sampling_params.custom_params)
        except HapoParamsError as exc:
            logger.error("request %s: %s; sampling it WITHOUT HAPO", getattr(req, "rid", "?"), exc)
            row = RowParams()
        seed = getattr(req.sampling_params, "sampling_seed", None)
        rows.append(row if seed is None else replace(row, seed=int(seed)))
    return rows


def rows_of(sampling_info) -> HapoRows | None:
    """The batch's HAPO rows, or None when no request of the batch carries HAPO parameters."""
    return getattr(sampling_info, ATTR, None)


# ---- AFTER hooks on SamplingBatchInfo (signature: hook(result, self, *args)) ----


def _after_from_schedule_batch(_result, info, batch, _vocab_size):
    rows = parse_requests(batch.reqs)
    # Batches without any HAPO or seeded request carry nothing: the sampler then takes the stock path.
    needed = any(r.enabled or r.seed is not None for r in rows)
    setattr(info, ATTR, HapoRows.from_params(rows, info.device) if needed else None)


def _after_merge_batch(_result, info, other):
    # Runs after SGLang concatenated its own tensors, so len(info) is already the merged size.
    mine, theirs = rows_of(info), rows_of(other)
    if mine is None and theirs is None:
        return
    n_other = len(other)
    n_self = len(info) - n_other
    if mine is None:
        mine = HapoRows.from_params([RowParams()] * n_self, info.device)
    if theirs is None:
        theirs = HapoRows.from_params([RowParams()] * n_other, info.device)
    setattr(info, ATTR, mine.concat(theirs))


def _after_filter_batch(_result, info, keep_indices, keep_indices_device):
    rows = rows_of(info)
    if rows is not None:
        kept = rows.filtered(list(keep_indices), keep_indices_device)
        setattr(info, ATTR, kept if kept.needed else None)


def _after_copy_for_forward(result, info):
    setattr(result, ATTR, rows_of(info))
    return result


_BATCH_INFO = "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo"
BATCH_HOOKS = {
    f"{_BATCH_INFO}.adjusted_from_schedule_batch": _after_from_schedule_batch,
    f"{_BATCH_INFO}.adjusted_merge_batch": _after_merge_batch,
    f"{_BATCH_INFO}.adjusted_filter_batch": _after_filter_batch,
    f"{_BATCH_INFO}.copy_for_forward": _after_copy_for_forward,
}
