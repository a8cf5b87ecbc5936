"""Fixtures shared by the rollout tests: one tiny fp32 Llama per test module, and its HF reference."""

import pytest
import torch

from megatron_hapo.demo.tiny_models import make_tiny_hf_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_hf_model(
        tmp_path_factory.mktemp("tiny"), family="llama", dtype="float32", initializer_range=0.3
    )


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
