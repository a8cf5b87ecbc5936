"""The HAPO sampler inside the real SGLang ``Engine`` (in-process, CPU), checked against Hugging Face.

One engine for the module, started with ``HAPO_SGLANG_SAMPLER=1`` and ``sampling_backend="pytorch"``:
the set-up in which SGLang would silently drop a custom backend name, so these tests also show that the
built-in-name route works. The entry point must be installed (spawned schedulers load the plugin from
it). The model is a tiny random Llama in fp32, served in fp32; tolerances are in ``reference.py``.
"""

import asyncio

import pytest
import torch

from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.demo.tiny_models import make_tiny_hf_model
from megatron_hapo.rollout.inprocess import shutdown_sglang_engine, start_sglang_engine
from megatron_hapo.rollout.sampler_wire import PARAMS_KEY, encode_request
from megatron_hapo.rollout.types import AdaptiveTemperature
from tests.sglang_ext.reference import (
    CPU_ENGINE_ARGS,
    ENTROPY_TOL,
    LOGPROB_TOL,
    TEMPERATURE_TOL,
    WRONG_HYPOTHESIS_MIN_ERR,
    HFReference,
    empirical,
    expected_tv_noise,
    max_abs,
    require_entry_point,
    returned,
    stats_of,
    total_variation,
    truncated_distribution,
)

pytestmark = pytest.mark.slow

VOCAB = 512
BASE_T = 0.8
TAU = 0.3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # initializer_range 0.3: peaked, varied next-token distributions (entropies ~1-4.5 nats), so the
    # schedule moves T across its whole range.
    return make_tiny_hf_model(
        tmp_path_factory.mktemp("tiny_llama"),
        family="llama",
        vocab_size=VOCAB,
        dtype="float32",
        initializer_range=0.3,
    )


@pytest.fixture(scope="module")
def hf(model_dir):
    return HFReference(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir):
    require_entry_point()

    # The variable must stay set while the engine serves: the tokenizer side (this process) checks it
    # when it validates a request that enables HAPO.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAPO_SGLANG_SAMPLER", "1")
        eng = start_sglang_engine(model_path=str(model_dir), sampling_backend="pytorch", **CPU_ENGINE_ARGS)
        try:
            yield eng
        finally:
            shutdown_sglang_engine(eng)


def _generate_staggered(engine, jobs):
    """Submit (prompt, sampling_params) jobs 30 ms apart, so later requests join a running decode batch
    (SamplingBatchInfo merge) while earlier ones finish at different lengths (filter)."""

    async def one(i, prompt, params):
        await asyncio.sleep(0.03 * i)
        return await engine.async_generate(input_ids=prompt, sampling_params=params, return_logprob=True)

    async def run():
        return await asyncio.gather(*(one(i, p, s) for i, (p, s) in enumerate(jobs)))

    return engine.loop.run_until_complete(run())


def _hapo_stats(i: int) -> EntropyStats:
    # Pivots around log H of this model (~0.5-1.5), both sign conventions (released: neg_scale < 0).
    return EntropyStats(pivot=0.6 + 0.2 * i, sigma=0.35, pos_scale=1.0, neg_scale=-1.0 if i % 2 else 1.0)


def test_returned_temperature_entropy_logprob_match_hf_under_batching(engine, hf):
    """Mixed concurrent batch: per-request stats, stats absent, disabled, plain, top-k and greedy rows.

    Each request's tokens must carry its own schedule (rows stay aligned through merge/filter), with
    logp_t = log_softmax(z_t / T_t)[y_t] and H_t = H(softmax(z_t)) of the HF logits of the same prefix.
    """
    jobs, kinds = [], []
    for i in range(5):  # HAPO with per-request statistics, different lengths
        params = {
            "temperature": BASE_T,
            "max_new_tokens": 8 + 6 * i,
            "ignore_eos": True,
            "custom_params": encode_request(AdaptiveTemperature(_hapo_stats(i), tau=TAU)),
        }
        jobs.append(([1, 20 + i, 40 + 3 * i, 7], params))
        kinds.append("adaptive")
    jobs.append(
        (
            [1, 99, 98],
            {
                "temperature": BASE_T,
                "max_new_tokens": 12,
                "ignore_eos": True,
                "custom_params": encode_request(AdaptiveTemperature(None, tau=TAU)),
            },
        )
    )
    kinds.append("no_stats")
    jobs.append(
        (
            [1, 77, 78, 79],
            {
                "temperature": 1.1,
                "max_new_tokens": 10,
                "ignore_eos": True,
                "custom_params": {
                    PARAMS_KEY: dict(
                        encode_request(AdaptiveTemperature(_hapo_stats(0)))[PARAMS_KEY], enabled=False
                    )
                },
            },
        )
    )
    kinds.append("disabled")
    jobs.append(([1, 66], {"temperature": 0.6, "top_k": 20, "max_new_tokens": 14, "ignore_eos": True}))
    kinds.append("plain")
    jobs.append(
        (
            [1, 55, 56],
            {
                "temperature": 0.0,
                "max_new_tokens": 9,
                "ignore_eos": True,
                "custom_params": encode_request(AdaptiveTemperature(_hapo_stats(1), tau=TAU)),
            },
        )
    )
    kinds.append("greedy")

    outputs = _generate_staggered(engine, jobs)

    worst = {"T": 0.0, "H": 0.0, "lp": 0.0}
    wrong = {"lp_at_T1": 0.0, "lp_at_Tbase": 0.0}
    moved = 0.0
    for (prompt, params), kind, out in zip(jobs, kinds, outputs):
        tokens, meta = out["output_ids"], out["meta_info"]
        assert len(tokens) == params["max_new_tokens"]
        temps, ents, lps = returned(meta)
        assert len(temps) == len(ents) == len(lps) == len(tokens), kind
        stats, tau = stats_of(params.get("custom_params"))
        base = params["temperature"]
        greedy = kind == "greedy"
        t_ref, h_ref, lp_ref, z = hf.expected(prompt, tokens, base, stats, tau, greedy=greedy)
        worst["T"] = max(worst["T"], max_abs(temps, t_ref))
        worst["H"] = max(worst["H"], max_abs(ents, h_ref))
        worst["lp"] = max(worst["lp"], max_abs(lps, lp_ref))
        if kind == "adaptive":
            y = torch.tensor(tokens)[:, None]
            wrong["lp_at_T1"] = max(
                wrong["lp_at_T1"], max_abs(lps, torch.log_softmax(z, -1).gather(1, y)[:, 0])
            )
            wrong["lp_at_Tbase"] = max(
                wrong["lp_at_Tbase"], max_abs(lps, torch.log_softmax(z / base, -1).gather(1, y)[:, 0])
            )
            moved = max(moved, max_abs(temps, torch.full_like(temps, base)))
        elif kind == "greedy":
            assert tokens == z.argmax(-1).tolist(), "greedy rows must stay argmax"
            assert temps.tolist() == [1.0] * len(tokens)  # SGLang's greedy rows: T = 1, logp = log_softmax(z)
        else:  # no statistics, disabled, plain: exactly the request's temperature (as SGLang stores it, fp32)
            assert temps.tolist() == [torch.tensor(base, dtype=torch.float32).item()] * len(tokens), kind

    print(
        f"\nmax |returned - HF reference|: {worst}; wrong hypotheses miss by {wrong}; max |T - T_base| {moved:.3f}"
    )
    assert worst["T"] <= TEMPERATURE_TOL
    assert worst["H"] <= ENTROPY_TOL
    assert worst["lp"] <= LOGPROB_TOL
    assert min(wrong.values()) > WRONG_HYPOTHESIS_MIN_ERR  # the test can tell the right T from T=1 or T_base
    assert moved > 0.05 * BASE_T  # the schedule really moved the temperature


def test_sampling_follows_the_adaptive_distribution(engine, hf):
    """Many draws of the first token after one fixed prefix: the empirical distribution is the truncated
    softmax(z / T_t) (top-k, top-p on the tempered probabilities), not softmax(z) nor the base-T one."""
    prompt = [1, 31, 32, 33]
    top_k, top_p, tau = 40, 0.95, 0.5
    # pivot far above log H: h << 0, h_hat = -1, T_t = T_base (1 - tau) = 0.5 (tau large to separate)
    stats = EntropyStats(pivot=10.0, sigma=1.0, pos_scale=1.0, neg_scale=1.0)
    params = {
        "temperature": 1.0,
        "top_k": top_k,
        "top_p": top_p,
        "max_new_tokens": 1,
        "custom_params": encode_request(AdaptiveTemperature(stats, tau=tau)),
    }
    draws, temps = [], set()
    for _ in range(4):  # 4 x 500 requests: one batch each on this engine's token budget
        for out in engine.generate(input_ids=[prompt] * 500, sampling_params=params):
            draws.append(out["output_ids"][0])
            temps.add(out["meta_info"]["hapo_temperature"][0])
    assert len(temps) == 1, f"one prefix must get one temperature, got {temps}"
    t_eff = temps.pop()
    assert abs(t_eff - 0.5) < 1e-6

    z = hf.next_logits(prompt, [0])[0]  # logits after the prompt
    intended = truncated_distribution(z, t_eff, top_k, top_p)
    emp = empirical(draws, VOCAB)
    noise = expected_tv_noise(intended, len(draws))
    tv = {
        "intended": total_variation(emp, intended),
        "softmax(z)": total_variation(emp, torch.softmax(z.double(), -1)),
        "truncated at T_base": total_variation(emp, truncated_distribution(z, 1.0, top_k, top_p)),
    }
    print(f"\n{len(draws)} draws, T_t={t_eff}: TV {tv}; expected sampling noise {noise:.4f}")
    assert emp[intended == 0].sum() == 0, "sampled outside the top-k/top-p support"
    assert tv["intended"] < 3 * noise
    assert tv["softmax(z)"] > 10 * noise and tv["truncated at T_base"] > 5 * noise


def test_sampling_seed_fixes_the_sample_whatever_the_batch(engine):
    """A request's ``sampling_seed`` alone fixes its tokens (HAPO and plain rows), whatever requests share
    its batch and whenever it joins; different seeds and unseeded requests still differ."""
    prompt = [1, 33, 71, 5]

    def job(seed, hapo=True, p=prompt):
        params = {"temperature": BASE_T, "top_p": 0.95, "max_new_tokens": 16, "ignore_eos": True}
        if hapo:
            params["custom_params"] = encode_request(AdaptiveTemperature(_hapo_stats(1), tau=TAU))
        if seed is not None:
            params["sampling_seed"] = seed
        return (p, params)

    first = _generate_staggered(engine, [job(11), job(12), job(7, hapo=False), job(None), job(None)])
    # the same seeds again, now joining a batch of other requests at other positions
    others = [job(None, p=[1, 90 + i, 4]) for i in range(3)]
    second = _generate_staggered(engine, [*others, job(7, hapo=False), others[0], job(11)])
    ids = [o["output_ids"] for o in first], [o["output_ids"] for o in second]
    assert ids[0][0] == ids[1][-1]  # seed 11, HAPO row
    assert ids[0][2] == ids[1][3]  # seed 7, plain row in a batch the HAPO sampler serves
    assert ids[0][0] != ids[0][1]  # another seed, another sample
    assert ids[0][3] != ids[0][4]  # unseeded requests stay random


@pytest.fixture(scope="module")
def overlap_engine(model_dir):
    """The same engine with SGLang's overlap scheduler on (the GPU default): the sampler hands T and H
    over as tensors and the scheduler turns them into lists after the batch's copy (sglang_ext.outputs)."""
    require_entry_point()

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAPO_SGLANG_SAMPLER", "1")
        args = dict(CPU_ENGINE_ARGS, disable_overlap_schedule=False)
        eng = start_sglang_engine(model_path=str(model_dir), sampling_backend="pytorch", **args)
        try:
            assert eng.get_server_info()["disable_overlap_schedule"] is False
            yield eng
        finally:
            shutdown_sglang_engine(eng)


def test_overlap_scheduler_returns_the_same_per_token_outputs(overlap_engine, hf):
    """The mixed-batch check above, against HF, with the overlap scheduler on."""
    test_returned_temperature_entropy_logprob_match_hf_under_batching(overlap_engine, hf)
