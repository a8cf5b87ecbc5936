"""SGLang outputs -> RolloutSample, without an engine."""

import pytest

from megatron_hapo.rollout.parse import to_samples
from megatron_hapo.rollout.sampler_wire import HapoSamplerMissingError


def output(tokens, hapo=True):
    meta = {
        "output_token_logprobs": [(-0.5 * (i + 1), t, None) for i, t in enumerate(tokens)],
        "finish_reason": {"type": "length"},
        "weight_version": "7",
    }
    if hapo:
        meta.update(
            hapo_temperature=[1.0 + 0.01 * i for i in range(len(tokens))], hapo_entropy=[2.0] * len(tokens)
        )
    return {"output_ids": tokens, "meta_info": meta}


def test_grouping_and_per_token_fields():
    samples = to_samples(
        [output([5, 6]), output([7]), output([8, 9, 10]), output([11])], [[1], [2, 3]], n=2, require_hapo=True
    )
    assert [(s.prompt_index, s.sample_index, s.prompt_ids) for s in samples] == [
        (0, 0, [1]), (0, 1, [1]), (1, 0, [2, 3]), (1, 1, [2, 3]),
    ]  # fmt: skip
    assert samples[2].logprobs == [-0.5, -1.0, -1.5] and samples[2].temperatures == [1.0, 1.01, 1.02]
    assert samples[0].weight_version == "7" and samples[0].finish_reason == "length"


def test_stock_sampler_output_is_rejected_when_hapo_was_requested():
    assert to_samples([output([5], hapo=False)], [[1]], n=1)[0].temperatures is None
    with pytest.raises(HapoSamplerMissingError, match="not running the HAPO sampler"):
        to_samples([output([5], hapo=False)], [[1]], n=1, require_hapo=True)


def test_misaligned_outputs_fail():
    bad = output([5, 6])
    bad["meta_info"]["output_token_logprobs"].pop()
    with pytest.raises(ValueError, match="1 log-probs for 2 tokens"):
        to_samples([bad], [[1]], n=1)
    with pytest.raises(ValueError, match="expected 2 outputs"):
        to_samples([output([5])], [[1]], n=2)


def test_seeded_requests_give_each_sample_its_own_seed():
    import pytest

    from megatron_hapo.rollout.types import GenerationParams, sample_seed

    params = GenerationParams(n=2, seeds=(5, 7))
    inputs, sampling = params.sglang_requests([[1, 2], [3]])
    assert inputs == [[1, 2], [1, 2], [3], [3]]  # prompt-major, one request per sample
    assert [s["sampling_seed"] for s in sampling] == [
        sample_seed(5, 0),
        sample_seed(5, 1),
        sample_seed(7, 0),
        sample_seed(7, 1),
    ]
    assert len({s["sampling_seed"] for s in sampling}) == 4
    assert [p.seeds for p in params.per_prompt(2)] == [(5,), (7,)]  # the fleet's one-prompt requests
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        params.per_prompt(3)
    unseeded_inputs, unseeded = GenerationParams(n=2).sglang_requests([[1, 2]])
    assert unseeded_inputs == [[1, 2]] and unseeded["n"] == 2 and "sampling_seed" not in unseeded


def _with_routed(out, prompt_len, per_token=4, offset=0):
    import base64

    import numpy as np

    rows = prompt_len + len(out["output_ids"]) - 1  # every token SGLang ran: all but the last response token
    ids = (np.arange(rows * per_token, dtype=np.int32) + offset) % 8 + offset
    out["meta_info"]["routed_experts"] = base64.b64encode(ids.tobytes()).decode()
    return ids.reshape(rows, per_token)


def test_routed_experts_are_decoded_per_token_in_a_small_type():
    import numpy as np

    out = output([5, 6, 7])
    expected = _with_routed(out, prompt_len=2)
    (sample,) = to_samples([out], [[1, 2]], n=1, routed_experts=True)
    assert sample.routed_experts.shape == (4, 4) and sample.routed_experts.dtype == np.uint8
    assert np.array_equal(sample.routed_experts, expected)
    wide = output([5])
    _with_routed(wide, prompt_len=2, offset=300)  # past 256 experts
    (sample,) = to_samples([wide], [[1, 2]], n=1, routed_experts=True)
    assert sample.routed_experts.dtype == np.int16 and sample.routed_experts.min() == 300
    assert to_samples([out], [[1, 2]], n=1)[0].routed_experts is None  # not asked: not kept


def test_missing_or_misshapen_routed_experts_fail_naming_the_fix():
    from megatron_hapo.rollout.types import EngineError

    with pytest.raises(EngineError, match="--enable-return-routed-experts"):
        to_samples([output([5, 6])], [[1]], n=1, routed_experts=True)
    out = output([5, 6])
    _with_routed(out, prompt_len=4, per_token=1)  # 5 ids: no whole number per token of [1] + [5, 6], less 1
    with pytest.raises(EngineError, match="do not split into the 2 tokens"):
        to_samples([out], [[1]], n=1, routed_experts=True)
