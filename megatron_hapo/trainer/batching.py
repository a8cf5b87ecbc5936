"""Which responses of a step go to which data-parallel rank, optimizer update and micro-batch.

Pure planning on sequence lengths (prompt + response tokens); no tensors. Every rank holds the whole step,
so every rank computes the same plan for all ranks without communicating, and metrics of the plan
(padding, token spread across ranks) are global for free.

Mini-batches (one optimizer update each) keep their historical membership: rank r's contiguous share of
the step, ``[r·N/dp, (r+1)·N/dp)``, is cut into ``num_mini`` equal slices, and mini-batch m is the union of
every rank's m-th slice. The batching mode only decides how a mini-batch's responses are laid out:

- fixed (``max_tokens is None``): rank r trains its own slice in micro-batches of ``micro_batch_size``
  responses, as before;
- token budget: the mini-batch's responses are spread over the DP ranks by tokens (longest first, each to
  the rank with the fewest tokens so far: LPT), then each rank groups its share first-fit-decreasing into
  micro-batches whose *padded* size ``rows x padded_len`` stays within the budget.

Every micro-batch is padded only to its own longest sequence, rounded up to ``pad_multiple`` (sequence
parallelism splits the sequence over TP ranks).

With packing (``packed=True``, a token budget is then required), a micro-batch is ONE row holding several
responses back to back (each with its own positions and attention that never crosses into its
neighbours: trainer/experience.py, models/packing.py); each rank groups its share first-fit-decreasing
into rows whose *real* tokens, rounded up to ``pad_multiple`` once per row, stay within the budget. Every rank runs the same number of micro-batches per
update (Megatron's schedule and its one gradient reduction per update expect it): ranks with fewer get
*empty* micro-batches (one row of ``pad_multiple`` padding tokens, all masked: zero loss, zero gradient).
The loss stays exact whatever the grouping because its normaliser is global (policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class MicroBatchPlan:
    """Rows (step indices of responses; empty = an all-padding micro-batch) and their padded length.

    ``packed``: all of ``rows`` share one row of ``seq_len`` tokens (their lengths summed, rounded up);
    otherwise each response is a row of its own, right-padded to ``seq_len``."""

    rows: tuple[int, ...]
    seq_len: int
    packed: bool = False

    @property
    def batch_rows(self) -> int:
        """Rows of the micro-batch's ``[b, s]`` tensors (an empty micro-batch computes one row)."""
        return 1 if self.packed else max(len(self.rows), 1)

    @property
    def slots(self) -> int:
        """Computed token slots: rows x padded length."""
        return self.batch_rows * self.seq_len


@dataclass
class StepPlan:
    """The layout of one step on every rank.

    update[r][m]: rank r's micro-batches of mini-batch m (the same count on every rank);
    old[r]: rank r's micro-batches of the old-policy pass (its responses of all mini-batches);
    responses[r]: the step indices rank r holds (the rows of its Experience, in this order).
    """

    update: list[list[list[MicroBatchPlan]]]
    old: list[list[MicroBatchPlan]]
    responses: list[list[int]]
    seq_lens: list[int] = field(repr=False)

    def rank_tokens(self) -> list[int]:
        """Real (prompt + response) tokens per rank."""
        return [sum(self.seq_lens[i] for i in rows) for rows in self.responses]

    def stats(self) -> dict[str, float]:
        """perf/* metrics of the plan over all ranks (see docs/training.md)."""
        real = sum(self.seq_lens[i] for rows in self.responses for i in rows) or 1
        upd_slots = sum(mb.slots for rank in self.update for mini in rank for mb in mini)
        old_slots = sum(mb.slots for rank in self.old for mb in rank)
        per_rank = self.rank_tokens()
        mean = sum(per_rank) / len(per_rank) or 1.0
        return {
            "perf/padding_ratio/update": upd_slots / real,
            "perf/padding_ratio/old": old_slots / real,
            "perf/micro_batches_per_rank/update": float(sum(len(mini) for mini in self.update[0])),
            "perf/micro_batches_per_rank/old": float(max(len(rank) for rank in self.old)),
            "perf/dp_tokens/max_over_mean": max(per_rank) / mean,
            "perf/dp_tokens/min_over_mean": min(per_rank) / mean,
        }


def mini_batch_members(n: int, dp: int, num_mini: int) -> list[list[list[int]]]:
    """members[m][r]: the step indices of rank r's m-th contiguous slice (see the module docstring)."""
    if n % (dp * num_mini):
        raise ValueError(
            f"{n} responses do not split into {dp} data-parallel ranks x {num_mini} mini-batches "
            "(data.train_batch_size x sampling.train.n must be a multiple of DP x updates per step)"
        )
    per_rank, per_mini = n // dp, n // dp // num_mini
    return [
        [list(range(r * per_rank + m * per_mini, r * per_rank + (m + 1) * per_mini)) for r in range(dp)]
        for m in range(num_mini)
    ]


def balance_ranks(rows: list[int], seq_lens: list[int], dp: int) -> list[list[int]]:
    """LPT: longest first, each to the rank with the fewest tokens (ties: fewest rows, lowest rank).
    The largest imbalance is at most one sequence's length. Rows keep their step order on each rank."""
    load = [(0, 0, r) for r in range(dp)]
    out: list[list[int]] = [[] for _ in range(dp)]
    for i in sorted(rows, key=lambda i: (-seq_lens[i], i)):
        tokens, count, r = min(load)
        out[r].append(i)
        load[r] = (tokens + seq_lens[i], count + 1, r)
    return [sorted(x) for x in out]


def pack_budget(rows: list[int], seq_lens: list[int], budget: int, pad_multiple: int) -> list[list[int]]:
    """First-fit decreasing into micro-batches with ``rows x round_up(longest, pad_multiple) <= budget``.

    Sorted longest first, the first row of a micro-batch fixes its padded length, so its capacity is
    ``budget // padded_len`` rows."""
    bins: list[list[int]] = []
    caps: list[int] = []
    for i in sorted(rows, key=lambda i: (-seq_lens[i], i)):
        padded = round_up(seq_lens[i], pad_multiple)
        if padded > budget:
            raise ValueError(
                f"a sequence of {seq_lens[i]} tokens (padded to {padded}) exceeds the micro-batch token "
                f"budget {budget}: raise data.max_tokens_per_micro_batch (or its old-pass budget) to at "
                "least data.max_prompt_length + rollout.max_new_tokens"
            )
        for b, cap in zip(bins, caps):
            if len(b) < cap:
                b.append(i)
                break
        else:
            bins.append([i])
            caps.append(budget // padded)
    return bins


def pack_rows(rows: list[int], seq_lens: list[int], budget: int, pad_multiple: int) -> list[list[int]]:
    """First-fit decreasing of whole sequences into packed rows with ``round_up(sum of lengths,
    pad_multiple) <= budget`` (a sequence is never split across rows)."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i in sorted(rows, key=lambda i: (-seq_lens[i], i)):
        n = seq_lens[i]
        if round_up(n, pad_multiple) > budget:
            raise ValueError(
                f"a sequence of {n} tokens (padded to {round_up(n, pad_multiple)}) exceeds the packed-row "
                f"token budget {budget}: raise data.max_tokens_per_micro_batch (or its old-pass budget) to "
                "at least data.max_prompt_length + rollout.max_new_tokens"
            )
        for b in range(len(bins)):
            if round_up(used[b] + n, pad_multiple) <= budget:
                bins[b].append(i)
                used[b] += n
                break
        else:
            bins.append([i])
            used.append(n)
    return [sorted(b) for b in bins]


def _micro(
    rows: list[int], seq_lens: list[int], pad_multiple: int, pad_to: int | None, packed: bool = False
) -> MicroBatchPlan:
    if packed and rows:
        return MicroBatchPlan(tuple(rows), round_up(sum(seq_lens[i] for i in rows), pad_multiple), True)
    longest = max((seq_lens[i] for i in rows), default=1)
    return MicroBatchPlan(tuple(rows), round_up(pad_to or longest, pad_multiple))


def _equalise(
    per_rank: list[list[MicroBatchPlan]], pad_multiple: int, count_multiple: int = 1
) -> list[list[MicroBatchPlan]]:
    """Every rank's list padded with empty micro-batches to the longest one's count rounded up to
    ``count_multiple``."""
    count = round_up(max(len(x) for x in per_rank), count_multiple)
    empty = MicroBatchPlan((), pad_multiple)
    return [x + [empty] * (count - len(x)) for x in per_rank]


def plan_step(
    seq_lens: list[int],
    dp: int,
    num_mini: int,
    *,
    max_tokens: int | None,
    max_tokens_old: int | None = None,
    micro_batch_size: int = 1,
    pad_multiple: int = 1,
    micro_batch_multiple: int = 1,
    pad_to_step: bool = False,
    packed: bool = False,
) -> StepPlan:
    """The step's layout on every rank (module docstring).

    ``seq_lens[i]``: prompt + response tokens of response i. ``max_tokens``: the update's token budget per
    micro-batch (None: fixed ``micro_batch_size`` rows); ``max_tokens_old``: the old-policy pass's
    (None: ``max_tokens``). ``pad_to_step``: pad every micro-batch to the step's longest sequence (the
    historical whole-step padding; for benchmarks and equivalence tests). ``packed``: micro-batches are
    packed rows (:func:`pack_rows`) under the same budgets, which are then required.
    ``micro_batch_multiple``: every rank's micro-batch count per update and in the old-policy pass is
    rounded up to it with empty micro-batches (``ParallelConfig.micro_batch_multiple``: PP under an
    interleaved pipeline).
    """
    if packed and (max_tokens is None or pad_to_step):
        raise ValueError("sequence packing needs a token budget (max_tokens) and no whole-step padding")
    group = pack_rows if packed else pack_budget
    members = mini_batch_members(len(seq_lens), dp, num_mini)
    pad_to = max(seq_lens) if pad_to_step else None
    update: list[list[list[MicroBatchPlan]]] = [[] for _ in range(dp)]
    responses: list[list[int]] = [[] for _ in range(dp)]
    for mini in members:
        if max_tokens is None:
            shares = mini
            groups = [
                [s[j : j + micro_batch_size] for j in range(0, len(s), micro_batch_size)] for s in shares
            ]
        else:
            shares = balance_ranks([i for s in mini for i in s], seq_lens, dp)
            groups = [group(s, seq_lens, max_tokens, pad_multiple) for s in shares]
        micro = [[_micro(g, seq_lens, pad_multiple, pad_to, packed) for g in rank] for rank in groups]
        for r, mbs in enumerate(_equalise(micro, pad_multiple, micro_batch_multiple)):
            update[r].append(mbs)
            responses[r].extend(shares[r])
    old_budget = max_tokens_old if max_tokens_old is not None else max_tokens
    old = []
    for rows in responses:
        if old_budget is None:
            groups = [rows[j : j + micro_batch_size] for j in range(0, len(rows), micro_batch_size)]
        else:
            groups = group(rows, seq_lens, old_budget, pad_multiple)
        old.append([_micro(g, seq_lens, pad_multiple, pad_to, packed) for g in groups])
    if micro_batch_multiple > 1:  # the old pass needs no equal counts across DP ranks, only the multiple
        old = [_equalise([rank], pad_multiple, micro_batch_multiple)[0] for rank in old]
    return StepPlan(update, old, responses, list(seq_lens))
