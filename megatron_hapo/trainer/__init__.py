"""The HAPO trainer: the RL loop (``loop.py``), its stages (rollout, policy, checkpoint, metrics) and the
CPU demo's tiny model. Entry points: ``hapo-train`` (``megatron_hapo.cli.train_main``), ``make demo``.

Megatron is imported lazily (inside the functions that need it); import ``megatron_hapo.parallel`` first.
"""

from megatron_hapo.trainer.algorithm import compute_advantages

__all__ = ["compute_advantages", "train"]


def train(cfg):
    """Run a training job (see :func:`megatron_hapo.trainer.loop.train`)."""
    from megatron_hapo.trainer.loop import train as _train

    return _train(cfg)
