"""Building SamplingBatchInfo / calling the Sampler the way SGLang's ModelRunner does (no engine)."""

import torch


def make_batch_info(temperatures, *, top_ks=None, top_ps=None, min_ps=None, rows=None, vocab_size):
    """A SamplingBatchInfo as the scheduler builds it (greedy rows: T = 1, top_k = 1).

    ``rows``: a list of ``sglang_ext.params.RowParams`` (None: no HAPO request in the batch).
    """
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo
    from sglang.srt.sampling.sampling_params import TOP_K_ALL

    from sglang_ext.batch_state import ATTR, HapoRows

    b = len(temperatures)
    top_ks = [TOP_K_ALL] * b if top_ks is None else top_ks
    top_ps = [1.0] * b if top_ps is None else top_ps
    min_ps = [0.0] * b if min_ps is None else min_ps
    info = SamplingBatchInfo(
        temperatures=torch.tensor(temperatures, dtype=torch.float32).view(-1, 1),
        top_ps=torch.tensor(top_ps, dtype=torch.float32),
        top_ks=torch.tensor(top_ks, dtype=torch.int32),
        min_ps=torch.tensor(min_ps, dtype=torch.float32),
        is_all_greedy=all(k <= 1 for k in top_ks),
        is_any_greedy=any(k <= 1 for k in top_ks),
        need_top_p_sampling=any(p != 1.0 for p in top_ps),
        need_top_k_sampling=any(k != TOP_K_ALL for k in top_ks),
        need_min_p_sampling=any(m > 0 for m in min_ps),
        vocab_size=vocab_size,
        device="cpu",
    )
    setattr(info, ATTR, HapoRows.from_params(rows, "cpu") if rows is not None else None)
    return info


def run_sampler(sampler, logits, info, seed=0):
    """One sampler call as ModelRunner.sample makes it, then the scheduler's result processing of its
    per-token outputs (``sglang_ext.outputs.to_host_lists``, which the plugin hooks into SGLang's);
    returns (token ids, log-probs, logits output)."""
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    from sglang_ext.outputs import to_host_lists

    b = logits.shape[0]
    out = LogitsProcessorOutput(next_token_logits=logits.clone())
    torch.manual_seed(seed)
    ids = sampler(out, info, True, [0] * b, [None] * b, torch.arange(b))
    to_host_lists(out)
    return ids, out.next_token_logprobs, out


def adaptive_call_against_definition() -> dict[str, float]:
    """One HAPO sampler call on a CPU batch of 6 adaptive rows (T_b = 0.9, τ = 0.3, fixed statistics) with
    whatever entropy kernel this process runs; its reported H and T_eff against the definition's:
    ``{"h_rel": max relative |ΔH|, "t": max |ΔT|, "moved": max |T_eff − T_b|}``."""
    from types import SimpleNamespace

    from sglang.srt.runtime_context import get_context, get_parallel

    from megatron_hapo.algorithms import EntropyStats, temperature_from_entropy, token_entropy
    from sglang_ext.params import RowParams
    from sglang_ext.sampler import HapoSampler

    server = get_context().override_server_args(device="cpu", sampling_backend="pytorch")
    with server, get_parallel().override(tp_group=SimpleNamespace(device_group=None)):
        z = torch.randn(6, 300, generator=torch.Generator().manual_seed(0)) * 3
        stats = (1.0, 0.5, 1.0, 1.0)
        info = make_batch_info([0.9] * 6, rows=[RowParams(True, 0.3, stats)] * 6, vocab_size=300)
        _, _, out = run_sampler(HapoSampler("pytorch"), z, info)
    got_h = torch.tensor(out.customized_info["hapo_entropy"])
    got_t = torch.tensor(out.customized_info["hapo_temperature"])
    want_h = token_entropy(z)
    want_t = temperature_from_entropy(want_h, torch.full((6,), 0.9), EntropyStats(*stats), 0.3)
    return {
        "h_rel": ((got_h - want_h).abs() / want_h.clamp_min(1e-3)).max().item(),
        "t": (got_t - want_t).abs().max().item(),
        "moved": (got_t - 0.9).abs().max().item(),
    }
