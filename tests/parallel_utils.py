"""In-process model-parallel worlds for tests (a world of one on a fresh port; torchrun jobs are in
``torchrun_utils.py``)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def world_of_one(device_mode: bool = True):
    """TP = PP = 1 model-parallel groups for the block (Megatron's CPU patches on unless ``device_mode``
    is false, e.g. for a CUDA test); torn down afterwards."""
    import megatron_hapo.parallel as hp

    hp.init_distributed()
    hp.initialize_model_parallel(1, 1)
    try:
        with hp.device_mode() if device_mode else contextlib.nullcontext():
            yield
    finally:
        hp.destroy_model_parallel()
