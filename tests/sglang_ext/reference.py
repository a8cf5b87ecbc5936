"""Shared helpers of the sglang_ext tests: the Hugging Face reference, distances, engine arguments."""

from __future__ import annotations

import math
from importlib.metadata import entry_points

import pytest
import torch

from megatron_hapo.algorithms import EntropyStats, temperature_from_entropy, token_entropy
from megatron_hapo.rollout.inprocess import cpu_server_args

ENTRY_POINT = ("hapo_adaptive_temperature", "sglang_ext:register")

# fp32 on both sides (the engine is started with dtype="float32": SGLang's dtype="auto" would serve an
# fp32 checkpoint in bf16). What remains is kernel summation order: observed |dT| ~ 2e-6,
# |dH| ~ 7e-6, |dlogp| ~ 1.2e-5 on the tiny model; the tolerances keep >= 10x headroom, and every test
# also checks that the wrong hypotheses (T = 1, T = T_base) miss by far more (> 0.05).
TEMPERATURE_TOL = 1e-4
ENTROPY_TOL = 2e-4
LOGPROB_TOL = 2e-4
WRONG_HYPOTHESIS_MIN_ERR = 0.05

# The package's CPU server arguments (one source of truth), minus the sampling backend: these tests
# choose it themselves (the plugin must also work when SGLang rewrites it to "pytorch").
CPU_ENGINE_ARGS = {
    **{k: v for k, v in cpu_server_args().items() if k != "sampling_backend"},
    "dtype": "float32",
    "random_seed": 1234,
    "log_level": "warning",
}


def require_entry_point() -> None:
    """Engine tests need the plugin installed as SGLang discovers it (spawned schedulers load it)."""
    found = {(ep.name, ep.value) for ep in entry_points(group="sglang.srt.plugins")}
    if ENTRY_POINT not in found:
        pytest.fail(
            f"entry point {ENTRY_POINT[0]} = {ENTRY_POINT[1]} (group sglang.srt.plugins) is not installed; add "
            "it to setup.py's entry_points and re-run `pip install -e . --no-deps` (found: "
            f"{sorted(found)})"
        )


def stats_of(custom_params: dict | None) -> tuple[EntropyStats | None, float]:
    """The (stats, tau) a request sent, read back from its custom_params."""
    hapo = (custom_params or {}).get("hapo") or {}
    if not hapo.get("enabled", False) or hapo.get("pivot") is None:
        return None, hapo.get("tau", 0.05)
    return EntropyStats(hapo["pivot"], hapo["sigma"], hapo["pos_scale"], hapo["neg_scale"]), hapo["tau"]


class HFReference:
    """The same checkpoint in Hugging Face ``transformers`` (fp32): logits, entropies, the schedule."""

    def __init__(self, model_dir):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def next_logits(self, prompt: list[int], output: list[int]) -> torch.Tensor:
        """z [len(output), V] fp32: row t are the logits that produced output[t] (prefix prompt+output[:t])."""
        ids = torch.tensor([list(prompt) + list(output)])
        return self.model(ids).logits[0, len(prompt) - 1 : ids.shape[1] - 1].float()

    def expected(self, prompt, output, base_temperature: float, stats, tau: float, greedy: bool = False):
        """Reference (T_t, H_t, logp_t) for one generated sequence.

        H_t = entropy(softmax(z_t)); T_t = temperature_from_entropy(H_t, T_base, stats, tau), or T_base
        without stats; logp_t = log_softmax(z_t / T_t)[y_t]. Greedy requests: T_t = 1 (SGLang samples
        greedy rows at temperature 1 and returns log_softmax(z)).
        """
        z = self.next_logits(prompt, output)
        entropy = token_entropy(z)
        if greedy:
            temperature = torch.ones_like(entropy)
        else:
            temperature = temperature_from_entropy(entropy, base_temperature, stats, tau)
        tokens = torch.tensor(output)[:, None]
        logp = torch.log_softmax(z / temperature[:, None], -1).gather(1, tokens)[:, 0]
        return temperature, entropy, logp, z


def returned(meta_info: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hapo_temperature, hapo_entropy, output log-probs) of one response, as fp64 tensors."""
    lp = [entry[0] for entry in meta_info["output_token_logprobs"]]
    return (
        torch.tensor(meta_info["hapo_temperature"], dtype=torch.float64),
        torch.tensor(meta_info["hapo_entropy"], dtype=torch.float64),
        torch.tensor(lp, dtype=torch.float64),
    )


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def truncated_distribution(z: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """softmax(z / T) restricted to SGLang's top-k then top-p support and renormalised ([V], fp64).

    SGLang's rule: sort descending, keep rank < top_k, then drop tokens whose exclusive cumulative mass
    exceeds top_p (``top_k_top_p_min_p_sampling_from_probs_torch``).
    """
    probs = torch.softmax(z.double() / temperature, -1)
    sorted_p, order = probs.sort(descending=True)
    keep = torch.arange(len(sorted_p)) < top_k
    keep &= (torch.cumsum(sorted_p, 0) - sorted_p) <= top_p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_p[keep]
    return out / out.sum()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


def empirical(tokens: list[int], vocab: int) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=vocab).double() / len(tokens)


def expected_tv_noise(q: torch.Tensor, n: int) -> float:
    """E[TV(empirical of n draws, q)] ~ 0.5 * sqrt(2/pi) * sum_v sqrt(q_v (1 - q_v) / n) (normal approx.)."""
    q = q.double()
    return 0.5 * math.sqrt(2 / math.pi) * torch.sqrt(q * (1 - q) / n).sum().item()
