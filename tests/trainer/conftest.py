"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def peaked_model(tmp_path_factory):
    """A tiny qwen2 (vocab 300, fp32) with varied, peaked next-token distributions (entropy statistics well
    conditioned); the batching, packing and recompute tests share it."""
    from megatron_hapo.demo.tiny_models import make_tiny_hf_model

    return make_tiny_hf_model(
        tmp_path_factory.mktemp("peaked") / "m",
        "qwen2",
        vocab_size=300,
        dtype="float32",
        initializer_range=0.5,
    )
