"""Shared fixtures of the trainer tests."""

import pytest


@pytest.fixture(scope="session")
def small_policy(tmp_path_factory):
    """A tiny policy briefly SFT-warmed on the bundled task (40 steps: it answers, not yet well); built
    once per test session for the short end-to-end runs."""
    from megatron_hapo.demo.policy import make_demo_model

    return make_demo_model(
        tmp_path_factory.mktemp("small_policy"),
        sft_steps=40,
        sft_files=["examples/data/tiny_math_train.parquet"],
    )
