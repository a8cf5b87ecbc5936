"""sglang_ext/host_memory.py: SGLang's routed-experts buffer (routing replay) on a torch without CUDA. An engine
started with enable_return_routed_experts runs in tests/trainer/test_moe_e2e.py."""

import torch

from sglang_ext.host_memory import cuda_host_register_hook


def test_registration_is_skipped_only_where_torch_has_no_cuda(monkeypatch):
    calls = []

    def register(buffer, granularity=None):
        calls.append((buffer, granularity))
        return "registered"

    buffer = torch.zeros(4, dtype=torch.int32)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    assert cuda_host_register_hook(register, buffer) is None and calls == []
    # a CUDA build: SGLang's own registration
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    assert cuda_host_register_hook(register, buffer, 4096) == "registered" and calls == [(buffer, 4096)]
