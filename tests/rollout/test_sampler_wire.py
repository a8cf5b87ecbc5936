"""The HAPO sampler's wire format (megatron_hapo.rollout.sampler_wire): encode, decode, checks. Fast.

The round trip through a real SGLang engine running the plugin is in tests/sglang_ext/test_engine.py and
test_server.py (requests built with ``encode_request``, outputs read with ``decode_outputs``).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.rollout.sampler_wire import (
    HapoParamsError,
    HapoSamplerMissingError,
    decode_outputs,
    decode_request,
    encode_request,
)
from megatron_hapo.rollout.types import AdaptiveTemperature, GenerationParams

STATS = EntropyStats(pivot=1.2, sigma=0.4, pos_scale=0.5, neg_scale=-0.25)


def test_encoder_builds_flat_namespaced_params_that_decode_back():
    adaptive = AdaptiveTemperature(STATS, tau=0.1)
    params = encode_request(adaptive)
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
    assert decode_request(params) == adaptive
    assert encode_request(AdaptiveTemperature()) == {"hapo": {"enabled": True, "tau": 0.05}}
    assert decode_request(encode_request(AdaptiveTemperature(tau=0.0))) == AdaptiveTemperature(tau=0.0)


def test_generation_params_carry_the_typed_field_to_sglang():
    adaptive = AdaptiveTemperature(STATS, tau=0.2)
    assert "custom_params" not in GenerationParams().to_sglang()
    sglang = GenerationParams(temperature=0.7, adaptive_temperature=adaptive).to_sglang()
    assert sglang["temperature"] == 0.7 and decode_request(sglang["custom_params"]) == adaptive


def test_stats_may_be_tensors_or_a_plain_tuple():
    adaptive = AdaptiveTemperature(tuple(torch.tensor(v) for v in STATS))
    assert adaptive.stats == pytest.approx((1.2, 0.4, 0.5, -0.25))
    assert all(type(v) is float for v in encode_request(adaptive)["hapo"].values() if v is not True)


@pytest.mark.parametrize("custom_params", [None, {}, {"thinking_budget": 5}, {"hapo": {"enabled": False}}])
def test_requests_without_hapo_are_stock(custom_params):
    assert decode_request(custom_params) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tau": 1.0}, "tau must be in"),
        ({"tau": -0.1}, "tau must be in"),
        ({"tau": float("nan")}, "tau must be a finite"),
        ({"stats": (1.0, 0.0, 1.0, 1.0)}, "sigma must be > 0"),
        ({"stats": (1.0, 0.5, 1.0)}, "needs the 4 values"),
        ({"stats": (float("inf"), 0.5, 1.0, 1.0)}, "pivot must be a finite"),
    ],
)
def test_adaptive_temperature_checks_its_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveTemperature(**kwargs)


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
def test_malformed_requests_are_rejected_with_the_key_named(hapo, message):
    with pytest.raises(HapoParamsError, match=message):
        decode_request({"hapo": hapo})


def test_params_survive_sglang_msgpack_ipc_but_nested_dicts_do_not():
    """SGLang types custom_params as Dict[str, scalar | list | dict[str, scalar]] on its msgpack IPC:
    the flat layout round-trips; a nested "stats" dict (one level deeper) is rejected by the decoder."""
    import msgspec
    from sglang.srt.sampling.sampling_params import SamplingParams

    def round_trip(custom_params):
        data = msgspec.msgpack.encode(SamplingParams(custom_params=custom_params))
        return msgspec.msgpack.decode(data, type=SamplingParams).custom_params

    flat = encode_request(AdaptiveTemperature(STATS))
    assert round_trip(flat) == flat
    with pytest.raises(msgspec.ValidationError):
        round_trip({"hapo": {"enabled": True, "stats": STATS.to_dict()}})


def test_decode_outputs():
    meta = {
        "output_token_logprobs": [[-1.0, 5, None]] * 2,
        "hapo_temperature": [1.0, 0.9],
        "hapo_entropy": [2, 3],
    }
    assert decode_outputs(meta) == ([1.0, 0.9], [2.0, 3.0])
    with pytest.raises(HapoSamplerMissingError, match="HAPO_SGLANG_SAMPLER"):
        decode_outputs({"output_token_logprobs": []})
    with pytest.raises(ValueError, match="misaligned"):
        decode_outputs(dict(meta, hapo_entropy=[2]))


def test_wire_module_is_light():
    """The plugin and the config validation import it: it must load neither SGLang nor torch."""
    code = (
        "import sys, megatron_hapo.rollout.sampler_wire as w; w.encode_request(w.AdaptiveTemperature()); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sglang', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_wire_module_speaks_to_the_plugin():
    """The trainer and the rollout engines never import sglang_ext: the wire format is theirs to encode."""
    package = Path(__file__).resolve().parents[2] / "megatron_hapo"
    importers = [
        str(path.relative_to(package.parent))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+sglang_ext\b", path.read_text(), re.MULTILINE)
    ]
    assert importers == []
