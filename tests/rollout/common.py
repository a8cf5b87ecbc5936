"""Helpers shared by the rollout tests."""

import torch

PROMPTS = [[1, 40, 41, 42, 43], [1, 50, 51]]
PROBE = "model.layers.0.mlp.down_proj.weight"  # not fused by SGLang in any family
LOGPROB_TOL = 2e-4  # fp32 on both sides; differences are kernel summation order only


def hf_logprobs(hf_model, prompt, response, temperature):
    """log_softmax(z / T) of each response token given its prefix, from the HF model."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = hf_model(ids).logits[0, len(prompt) - 1 : -1].double()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def perturbed_state(hf_model, scale):
    return [(n, t * scale) for n, t in hf_model.state_dict().items()]


def wait_until_in_flight(engine, count: int = 1, timeout_s: float = 120.0) -> None:
    """Until ``engine`` has ``count`` generate requests running (its request gate counts them), so that a sync
    started right after finds them all in flight; AssertionError after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while engine.request_gate.in_flight < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{engine.request_gate.in_flight} of {count} requests in flight after {timeout_s} s"
            )
        time.sleep(0.005)
