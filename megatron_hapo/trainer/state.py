"""The RL loop's own state between steps: the last completed step and the entropy statistics that step
measured (the next rollout's sampler reads them, HAPO's adaptive temperature).

The data cursors (the prompt order's position and the next group id) belong to the rollout stage, which
saves and restores them itself (:meth:`~megatron_hapo.trainer.rollout_stage.RolloutStage.state_dict`); the
optimizer and LR schedule belong to the policy (``trainer/checkpoint.py``). A checkpoint's
``trainer_state.json`` is this object's :meth:`TrainerState.state_dict` with each component's state
under its own key (``rollout``, ``scheduler``), in the layout ``trainer/checkpoint.py::STATE_FORMAT`` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_hapo.algorithms import EntropyStats


@dataclass
class TrainerState:
    """``step``: the last completed RL step (0 before the first); ``entropy_stats``: that step's
    step-global entropy statistics (None before the first step, when the sampler uses its base temperature)."""

    step: int = 0
    entropy_stats: EntropyStats | None = None

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"step": int, "entropy_stats": {pivot, sigma, ...} | None}``."""
        stats = self.entropy_stats.to_dict() if self.entropy_stats is not None else None
        return {"step": self.step, "entropy_stats": stats}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`'s output; raises ``ValueError`` naming a missing key."""
        missing = [k for k in ("step", "entropy_stats") if k not in state]
        if missing:
            raise ValueError(
                f"TrainerState.load_state_dict: the state lacks {missing}; it has {sorted(state)}"
            )
        self.step = int(state["step"])
        stats = state["entropy_stats"]
        self.entropy_stats = EntropyStats.from_dict(stats) if stats else None
