"""The HAPO sampler called directly with built SamplingBatchInfo objects (SGLang's real Sampler code
path, no engine). Fast."""

import json

import pytest
import torch

from megatron_hapo.algorithms import EntropyStats, temperature_from_entropy, token_entropy
from sglang_ext.params import RowParams
from tests.sglang_ext.reference import empirical, expected_tv_noise, total_variation, truncated_distribution
from tests.sglang_ext.sampler_utils import make_batch_info, run_sampler

V = 64
SIGNED = (1.0, 0.5, 1.0, 1.0)  # pivot, sigma, pos_scale, neg_scale
RELEASED = (1.2, 0.3, 0.8, -0.7)


@pytest.fixture(scope="module")
def samplers(sglang_context):
    from sglang.srt.layers.sampler import Sampler

    from sglang_ext.sampler import HapoSampler

    return Sampler(), HapoSampler("pytorch")


def _logits(b, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, V, generator=g) * scale


# One row of each kind: (base T, top_k, top_p, min_p, RowParams, adaptive?)
MIXED = [
    (0.8, None, 1.0, 0.0, RowParams(True, 0.3, SIGNED), True),
    (1.0, None, 0.9, 0.0, RowParams(True, 0.2, RELEASED), True),
    (0.7, None, 1.0, 0.0, RowParams(True, 0.3, None), False),  # enabled, no statistics
    (1.2, 20, 1.0, 0.0, RowParams(False, 0.3, SIGNED), False),  # disabled
    (1.0, 1, 1.0, 0.0, RowParams(True, 0.3, SIGNED), False),  # greedy (T=0 -> T=1, top_k=1)
    (0.5, 10, 1.0, 0.05, RowParams(True, 0.4, SIGNED), True),
    (0.9, None, 0.8, 0.0, RowParams(), False),  # no hapo key
]


def _mixed_info(rows=MIXED):
    from sglang.srt.sampling.sampling_params import TOP_K_ALL

    return make_batch_info(
        [r[0] for r in rows],
        top_ks=[TOP_K_ALL if r[1] is None else r[1] for r in rows],
        top_ps=[r[2] for r in rows],
        min_ps=[r[3] for r in rows],
        rows=[r[4] for r in rows],
        vocab_size=V,
    )


def test_logprob_is_log_softmax_at_the_scheduled_temperature(samplers):
    """Per row: T_b from the shared schedule with that row's own statistics, logp = log_softmax(z/T_b),
    H_b = token_entropy(z_b); every other kind of row keeps its base temperature."""
    _, hapo = samplers
    z = _logits(len(MIXED))
    ids, logprobs, out = run_sampler(hapo, z, _mixed_info())
    temps = torch.tensor(out.customized_info["hapo_temperature"])
    ents = torch.tensor(out.customized_info["hapo_entropy"])

    entropy = token_entropy(z)
    assert torch.equal(ents, entropy)
    for b, (base, _k, _p, _m, row, adaptive) in enumerate(MIXED):
        # Row by row with a scalar EntropyStats: pins that the sampler's per-row [B] stats give the same.
        want = (
            temperature_from_entropy(entropy[b : b + 1], base, EntropyStats(*row.stats), row.tau).item()
            if adaptive
            else torch.tensor(base, dtype=torch.float32).item()
        )
        assert temps[b].item() == pytest.approx(want, abs=1e-6), b
    assert any(abs(temps[b] - MIXED[b][0]) > 0.01 for b in range(len(MIXED)) if MIXED[b][5])
    expected_lp = torch.log_softmax(z / temps[:, None], -1).gather(1, ids.long()[:, None])[:, 0]
    assert (logprobs - expected_lp).abs().max() < 1e-6  # SGLang's log(softmax) vs log_softmax, fp32
    json.dumps(out.customized_info)  # plain Python floats: HTTP responses serialise


def test_non_adaptive_rows_are_bit_for_bit_stock(samplers):
    """Same RNG seed: every row that is not adaptive gets the stock sampler's token and log-prob exactly,
    also when it shares the batch with adaptive rows; greedy rows stay argmax."""
    stock, hapo = samplers
    z = _logits(len(MIXED), seed=1)
    keep = [b for b, r in enumerate(MIXED) if not r[5]]
    for seed in range(5):
        ids_s, lp_s, _ = run_sampler(stock, z, _mixed_info(), seed=seed)
        ids_h, lp_h, _ = run_sampler(hapo, z, _mixed_info(), seed=seed)
        assert torch.equal(ids_s[keep], ids_h[keep])
        assert torch.equal(lp_s[keep], lp_h[keep])
    greedy = [b for b, r in enumerate(MIXED) if r[1] == 1]
    assert torch.equal(ids_h[greedy].long(), z[greedy].argmax(-1))


@pytest.mark.parametrize("kind", ["disabled", "no_stats", "no_hapo_batch", "all_greedy"])
def test_batches_without_adaptive_rows_are_untouched(samplers, kind):
    stock, hapo = samplers
    b = 6
    z = _logits(b, seed=2)
    temps, top_ks, rows = [0.9] * b, [None] * b, None
    if kind == "disabled":
        rows = [RowParams(False, 0.3, SIGNED)] * b
    elif kind == "no_stats":
        rows = [RowParams(True, 0.3, None)] * b
    elif kind == "all_greedy":
        temps, top_ks, rows = [1.0] * b, [1] * b, [RowParams(True, 0.3, SIGNED)] * b
    from sglang.srt.sampling.sampling_params import TOP_K_ALL

    def info():
        return make_batch_info(
            temps, top_ks=[TOP_K_ALL if k is None else k for k in top_ks], rows=rows, vocab_size=V
        )

    ids_s, lp_s, out_s = run_sampler(stock, z, info(), seed=3)
    ids_h, lp_h, out_h = run_sampler(hapo, z, info(), seed=3)
    assert torch.equal(ids_s, ids_h) and torch.equal(lp_s, lp_h)
    assert torch.equal(out_s.next_token_logits, out_h.next_token_logits)
    assert out_h.customized_info["hapo_temperature"] == info().temperatures.view(-1).tolist()


def test_empirical_distribution_is_the_truncated_adaptive_softmax(samplers):
    """20,000 draws from one logit row: TV to truncated softmax(z/T_eff) is sampling noise; softmax(z)
    and the base-temperature distribution are far."""
    _, hapo = samplers
    n, top_k, top_p = 20000, 12, 0.9
    z = _logits(1, seed=4)[0]
    row = RowParams(True, 0.5, (10.0, 1.0, 1.0, 1.0))  # pivot >> log H: h_hat = -1, T_eff = 0.5 * T_base
    info = make_batch_info([1.0] * n, top_ks=[top_k] * n, top_ps=[top_p] * n, rows=[row] * n, vocab_size=V)
    ids, _, out = run_sampler(hapo, z.expand(n, V), info, seed=5)
    t_eff = out.customized_info["hapo_temperature"][0]
    assert t_eff == pytest.approx(0.5)
    intended = truncated_distribution(z, t_eff, top_k, top_p)
    emp = empirical(ids.tolist(), V)
    noise = expected_tv_noise(intended, n)
    assert emp[intended == 0].sum() == 0
    assert total_variation(emp, intended) < 3 * noise
    assert total_variation(emp, torch.softmax(z.double(), -1)) > 10 * noise
    assert total_variation(emp, truncated_distribution(z, 1.0, top_k, top_p)) > 10 * noise


def test_batch_keeps_its_temperatures(samplers, monkeypatch):
    """T_eff is lent to SGLang for one call only: the batch's own tensor is back afterwards, unchanged
    (the scheduler merges, filters and re-samples from it next step)."""
    _, hapo = samplers
    info = _mixed_info()
    own = info.temperatures
    before = own.clone()
    run_sampler(hapo, _logits(len(MIXED)), info)
    assert info.temperatures is own and torch.equal(own, before)

    def kernel_failure(*args, **kwargs):
        raise RuntimeError("sampling kernel failed")

    monkeypatch.setattr(hapo, "_sample_from_probs", kernel_failure)  # fails after T_eff was lent
    broken = _mixed_info()
    own = broken.temperatures
    with pytest.raises(RuntimeError, match="kernel failed"):
        run_sampler(hapo, _logits(len(MIXED)), broken)
    assert broken.temperatures is own  # restored on errors too


def test_backend_name_hapo_samples_with_the_inner_kernels(samplers):
    """Under --sampling-backend hapo (GPU, no rewrite) the stock top-k path would reject the name; the
    HAPO sampler runs the built-in kernels it was created with."""
    from sglang.srt.runtime_context import get_exec

    stock, hapo = samplers
    z = _logits(4, seed=6)

    def info():
        return make_batch_info(
            [1.0] * 4, top_ks=[5] * 4, rows=[RowParams(True, 0.2, SIGNED)] * 4, vocab_size=V
        )

    with get_exec().kernel.override(sampling_backend="hapo"):
        with pytest.raises(ValueError, match="Invalid sampling backend"):
            run_sampler(stock, z, info())
        ids, _, _ = run_sampler(hapo, z, info())
    top5 = z.topk(5, -1).indices
    assert all(int(t) in top5[b].tolist() for b, t in enumerate(ids))


def test_prefill_scoring_is_not_rescaled(samplers):
    """compute_logprobs_only (prefill-only scoring) shares _preprocess_logits; HAPO must not touch it."""
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    stock, hapo = samplers
    z = _logits(3, seed=7)
    results = []
    for sampler in (stock, hapo):
        out = LogitsProcessorOutput(next_token_logits=z.clone())
        info = make_batch_info([0.7] * 3, rows=[RowParams(True, 0.3, SIGNED)] * 3, vocab_size=V)
        sampler.compute_logprobs_only(out, info, [3] * 3, [[1, 2]] * 3)
        results.append(out)
    for field in ("next_token_top_logprobs_val", "next_token_token_ids_logprobs_val"):
        stock_val, hapo_val = getattr(results[0], field), getattr(results[1], field)
        assert stock_val is not None, field
        assert _plain(stock_val) == _plain(hapo_val), field
    assert results[1].customized_info is None


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def test_existing_customized_info_is_kept(samplers):
    from sglang.srt.layers.logits_processor import LogitsProcessorOutput

    _, hapo = samplers
    out = LogitsProcessorOutput(next_token_logits=_logits(2), customized_info={"other": [1, 2]})
    info = make_batch_info([1.0, 1.0], rows=None, vocab_size=V)
    hapo(out, info, False, [0, 0], [None, None], torch.arange(2))
    assert set(out.customized_info) == {"other", "hapo_temperature", "hapo_entropy"}
