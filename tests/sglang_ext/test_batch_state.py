"""Per-row HAPO parameters follow SGLang's own SamplingBatchInfo through from_schedule_batch, merge,
filter and copy_for_forward (the real methods, with the plugin's hooks applied by register()). Fast."""

from types import SimpleNamespace

import pytest
import torch

from megatron_hapo.rollout.sampler_wire import encode_request
from megatron_hapo.rollout.types import AdaptiveTemperature
from sglang_ext.batch_state import ATTR

STATS = {i: (0.5 + i, 0.1 * (i + 1), 1.0, -1.0) for i in range(8)}


class _Batch:  # what from_schedule_batch reads from a ScheduleBatch (weak-referenceable, like the real one)
    def __init__(self, reqs):
        self.reqs, self.device = reqs, "cpu"


def _req(i, hapo: bool):
    from sglang.srt.sampling.sampling_params import SamplingParams

    custom = encode_request(AdaptiveTemperature(STATS[i], tau=0.01 * (i + 1))) if hapo else None
    params = SamplingParams(temperature=0.5 + 0.1 * i, max_new_tokens=4, custom_params=custom)
    params.normalize(None)
    return SimpleNamespace(
        rid=f"r{i}",
        sampling_params=params,
        custom_logit_processor=None,
        return_sampling_mask=False,
        sampling_logprobs_mode=None,
        output_ids=[],
        origin_input_ids=[1],
    )


def _info(spec):
    """spec: list of (request index, hapo?)"""
    from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo

    return SamplingBatchInfo.from_schedule_batch(_Batch([_req(i, h) for i, h in spec]), 100)


def _assert_rows(info, spec):
    """Row b of the HAPO state belongs to request spec[b] (the temperatures tensor is SGLang's own)."""
    rows = getattr(info, ATTR)
    assert torch.allclose(info.temperatures.view(-1), torch.tensor([0.5 + 0.1 * i for i, _ in spec]))
    if not any(h for _, h in spec):
        assert rows is None
        return
    assert rows.enabled_host == [h for _, h in spec]
    for b, (i, h) in enumerate(spec):
        if h:
            assert rows.stats[b].tolist() == pytest.approx(STATS[i])
            assert rows.tau[b].item() == pytest.approx(0.01 * (i + 1))
    assert rows.adaptive.tolist() == [h for _, h in spec]


def test_schedule_merge_filter_copy(registered):
    a_spec, b_spec = [(0, True), (1, False)], [(2, False), (3, True), (4, True)]
    a, b = _info(a_spec), _info(b_spec)
    _assert_rows(a, a_spec)
    a.merge_batch(b)
    merged = a_spec + b_spec
    _assert_rows(a, merged)
    keep = [1, 3, 4]
    a.filter_batch(keep, torch.tensor(keep))
    _assert_rows(a, [merged[k] for k in keep])
    forward_copy = a.copy_for_forward()  # dataclasses.replace: the hook must carry the state over
    _assert_rows(forward_copy, [merged[k] for k in keep])


@pytest.mark.parametrize("hapo_side", ["left", "right", "none"])
def test_merge_with_a_batch_without_hapo(registered, hapo_side):
    left = [(0, hapo_side == "left"), (1, False)]
    right = [(2, hapo_side == "right")]
    a, b = _info(left), _info(right)
    a.merge_batch(b)
    _assert_rows(a, left + right)


def test_filtering_out_every_hapo_row_drops_the_state(registered):
    spec = [(0, True), (1, False), (2, False)]
    info = _info(spec)
    info.filter_batch([1, 2], torch.tensor([1, 2]))
    assert getattr(info, ATTR) is None
