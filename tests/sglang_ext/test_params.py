"""Client-side HAPO parameters: building, validation, JSON/msgpack safety, output checks. Fast."""

import json
import subprocess
import sys

import pytest
import torch

from megatron_hapo.algorithms import EntropyStats
from sglang_ext import (
    HapoParamsError,
    HapoSamplerMissingError,
    hapo_sampling_params,
    require_hapo_outputs,
)
from sglang_ext.params import DISABLED, RowParams, parse_row

STATS = EntropyStats(pivot=1.2, sigma=0.4, pos_scale=0.5, neg_scale=-0.25)


def test_helper_builds_flat_namespaced_params_that_parse_back():
    params = hapo_sampling_params(STATS, tau=0.1)
    assert params == {
        "hapo": {
            "enabled": True,
            "tau": 0.1,
            "pivot": 1.2,
            "sigma": 0.4,
            "pos_scale": 0.5,
            "neg_scale": -0.25,
        }
    }
    assert json.loads(json.dumps(params)) == params  # JSON-safe: HTTP clients send it as is
    assert parse_row(params) == RowParams(enabled=True, tau=0.1, stats=(1.2, 0.4, 0.5, -0.25))


def test_helper_without_stats_and_disabled():
    assert hapo_sampling_params(None) == {"hapo": {"enabled": True, "tau": 0.05}}
    assert parse_row(hapo_sampling_params(None)) == RowParams(enabled=True, tau=0.05, stats=None)
    assert parse_row(hapo_sampling_params(STATS, enabled=False)).enabled is False


def test_stats_may_be_tensors_or_a_plain_tuple():
    as_tensors = hapo_sampling_params(tuple(torch.tensor(v) for v in STATS))
    assert as_tensors["hapo"]["pivot"] == pytest.approx(1.2) and isinstance(
        as_tensors["hapo"]["pivot"], float
    )


@pytest.mark.parametrize("custom_params", [None, {}, {"thinking_budget": 5}])
def test_requests_without_hapo_key_are_disabled(custom_params):
    assert parse_row(custom_params) is DISABLED


@pytest.mark.parametrize(
    "hapo, message",
    [
        ({"enabled": True, "tau": 1.0}, "tau"),
        ({"enabled": True, "tau": -0.1}, "tau"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": True, "pivot": 1.0, "sigma": 0.5}, "all four or none"),
        (
            {"enabled": True, "pivot": float("nan"), "sigma": 0.5, "pos_scale": 1.0, "neg_scale": 1.0},
            "finite",
        ),
        ({"enabled": True, "pivot": 1.0, "sigma": 0.0, "pos_scale": 1.0, "neg_scale": 1.0}, "sigma"),
        ({"enabled": True, "stats": {"pivot": 1.0}}, "unknown keys"),
        ("on", "must be a dict"),
    ],
)
def test_malformed_params_are_rejected_with_the_key_named(hapo, message):
    with pytest.raises(HapoParamsError, match=message):
        parse_row({"hapo": hapo})


def test_helper_validates_like_the_server():
    with pytest.raises(HapoParamsError, match="tau"):
        hapo_sampling_params(STATS, tau=1.5)


def test_params_survive_sglang_msgpack_ipc_but_nested_dicts_do_not():
    """SGLang types custom_params as Dict[str, scalar | list | dict[str, scalar]] on its msgpack IPC:
    the flat layout round-trips; a nested "stats" dict (one level deeper) is rejected by the decoder."""
    import msgspec
    from sglang.srt.sampling.sampling_params import SamplingParams

    def round_trip(custom_params):
        data = msgspec.msgpack.encode(SamplingParams(custom_params=custom_params))
        return msgspec.msgpack.decode(data, type=SamplingParams).custom_params

    flat = hapo_sampling_params(STATS)
    assert round_trip(flat) == flat
    with pytest.raises(msgspec.ValidationError):
        round_trip({"hapo": {"enabled": True, "stats": STATS.to_dict()}})


def test_require_hapo_outputs():
    meta = {
        "output_token_logprobs": [[-1.0, 5, None]] * 2,
        "hapo_temperature": [1.0, 0.9],
        "hapo_entropy": [2, 3],
    }
    assert require_hapo_outputs(meta) == ([1.0, 0.9], [2, 3])
    with pytest.raises(HapoSamplerMissingError, match="HAPO_SGLANG_SAMPLER"):
        require_hapo_outputs({"output_token_logprobs": []})
    with pytest.raises(ValueError, match="misaligned"):
        require_hapo_outputs(dict(meta, hapo_entropy=[2]))


def test_package_import_is_light():
    """Clients import sglang_ext to build requests; that must not import SGLang (or torch)."""
    code = "import sys, sglang_ext; sglang_ext.hapo_sampling_params(None); print(sorted({m.split('.')[0] for m in sys.modules} & {'sglang', 'torch'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
