"""Deterministic, resumable batching of dataset indices.

The order of epoch ``e`` is a pure function of ``(seed, e)`` (numpy's PCG64 permutation), so the
order's whole state is three numbers: epoch, position within the epoch, seed. Saved in a checkpoint
and loaded back, it yields exactly the batches an uninterrupted run would have yielded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from megatron_hapo.data.rows import DataError


class PromptOrder:
    """Yields batches of indices in ``[0, num_items)``, epoch after epoch.

    batch_size: indices per batch (prompts per generation batch). shuffle: a new permutation per epoch,
    else ``0..num_items-1``. drop_last: an epoch ends when fewer than batch_size indices remain (those
    are skipped this epoch; with shuffling they come up in other epochs); else the last batch is short.
    """

    def __init__(
        self, num_items: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = True
    ):
        if num_items < 1:
            raise ValueError(f"the dataset is empty (num_items={num_items})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > num_items:
            raise DataError(
                f"batch size {batch_size} is larger than the dataset ({num_items} prompts) with drop_last: "
                "no batch could ever be produced; lower data.train_batch_size or add data"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # indices of this epoch already handed out
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The index order of ``epoch``: ``[num_items]`` int64."""
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_items, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def _current_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order, self._order_epoch = self.order(self.epoch), self.epoch
        assert self._order is not None
        return self._order

    def epoch_of_next_batch(self) -> int:
        """The epoch the next ``next_batch()`` will come from (stop when it reaches total_epochs)."""
        remaining = self.num_items - self.position
        rolls = remaining == 0 or (self.drop_last and remaining < self.batch_size)
        return self.epoch + 1 if rolls else self.epoch

    def next_batch(self) -> list[int]:
        """The next batch of indices; moves to the next epoch when this one is used up."""
        remaining = self.num_items - self.position
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch += 1
            self.position = 0
        order = self._current_order()
        batch = order[self.position : self.position + self.batch_size]
        self.position += len(batch)
        return batch.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        """Batches forever; the caller decides when to stop (steps or ``epoch``)."""
        while True:
            yield self.next_batch()

    # ---------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and bools, for checkpoints."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_items": self.num_items,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``. The dataset size, seed and shuffle must match (else the order
        would differ silently); batch_size and drop_last may change (position counts indices)."""
        for key in ("num_items", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise DataError(
                    f"data order state from the checkpoint has {key}={state.get(key)!r} but this run has "
                    f"{getattr(self, key)!r}: the data or data.seed/data.shuffle changed since the checkpoint; "
                    "restore them, or start fresh (checkpoint.resume=none)"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.num_items:
            raise ValueError(
                f"corrupt data order state: epoch={epoch}, position={position}, num_items={self.num_items}"
            )
        self.epoch, self.position = epoch, position
