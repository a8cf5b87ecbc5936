"""The plugin's side of the request parameters: custom_params -> RowParams, with the client's encoder. Fast."""

import subprocess
import sys

import pytest

from megatron_hapo.algorithms import EntropyStats
from megatron_hapo.rollout.sampler_wire import encode_request
from megatron_hapo.rollout.types import AdaptiveTemperature
from sglang_ext import HapoParamsError
from sglang_ext.params import DISABLED, RowParams, parse_row

STATS = EntropyStats(pivot=1.2, sigma=0.4, pos_scale=0.5, neg_scale=-0.25)


def test_the_plugin_parses_what_the_client_encodes():
    assert parse_row(encode_request(AdaptiveTemperature(STATS, tau=0.1))) == RowParams(
        enabled=True, tau=0.1, stats=(1.2, 0.4, 0.5, -0.25)
    )
    assert parse_row(encode_request(AdaptiveTemperature())) == RowParams(enabled=True, tau=0.05, stats=None)
    assert parse_row({"hapo": {"enabled": False, "tau": 0.2}}) is DISABLED


@pytest.mark.parametrize("custom_params", [None, {}, {"thinking_budget": 5}])
def test_requests_without_hapo_key_are_disabled(custom_params):
    assert parse_row(custom_params) is DISABLED


@pytest.mark.parametrize(
    "hapo, message",
    [({"enabled": True, "tau": 1.0}, "tau"), ({"enabled": True, "sigma": 1.0}, "all four"), ("on", "dict")],
)
def test_malformed_params_are_rejected_with_the_key_named(hapo, message):
    with pytest.raises(HapoParamsError, match=message):
        parse_row({"hapo": hapo})


def test_package_import_is_light():
    """SGLang loads the entry point in every process; importing the package must not import SGLang (or torch)."""
    code = (
        "import sys, sglang_ext; print(sorted({m.split('.')[0] for m in sys.modules} & {'sglang', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
