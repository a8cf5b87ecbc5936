"""Registration, the ways HAPO is requested, and the fail-loud checks (real SGLang registry and
create_sampler, faked server context). Fast."""

from types import SimpleNamespace

import pytest

from sglang_ext import plugin
from sglang_ext.plugin import HapoSamplerNotInstalledError, hapo_requested
from tests.sglang_ext.reference import require_entry_point


def test_entry_point_is_installed():
    require_entry_point()


@pytest.mark.parametrize(
    "value, expected", [("1", True), ("true", True), ("0", False), ("", False), ("off", False)]
)
def test_env_variable(monkeypatch, value, expected):
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", value)
    assert plugin.env_requested() is expected


def test_env_variable_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "ture")
    with pytest.raises(ValueError, match="HAPO_SGLANG_SAMPLER"):
        plugin.env_requested()


def test_requested_by_backend_name_even_after_sglang_rewrote_it(monkeypatch):
    monkeypatch.delenv("HAPO_SGLANG_SAMPLER", raising=False)
    rewritten = SimpleNamespace(sampling_backend="pytorch", _raw_input={"sampling_backend": "hapo"})
    assert hapo_requested(rewritten) == "--sampling-backend hapo"
    assert hapo_requested(SimpleNamespace(sampling_backend="pytorch", _raw_input={})) is None
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "1")
    assert hapo_requested(None) == "HAPO_SGLANG_SAMPLER=1"


def test_builtin_names_give_the_stock_sampler_unless_requested(registered, monkeypatch):
    from sglang.srt.layers.sampler import Sampler, create_sampler

    from sglang_ext.sampler import HapoSampler

    monkeypatch.delenv("HAPO_SGLANG_SAMPLER", raising=False)
    assert type(create_sampler("pytorch")) is Sampler  # exactly SGLang's class: stock behaviour
    assert isinstance(create_sampler("hapo"), HapoSampler)
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "1")
    sampler = create_sampler("pytorch")
    assert isinstance(sampler, HapoSampler) and sampler.inner_backend == "pytorch"


def test_hapo_is_a_valid_backend_choice(registered):
    from sglang.srt.server_args import SAMPLING_BACKEND_CHOICES

    assert "hapo" in SAMPLING_BACKEND_CHOICES


def test_refuses_when_another_sampler_took_the_backend(registered, monkeypatch):
    """Another plugin re-registering "pytorch" after ours: the scheduler must not start silently stock."""
    from sglang.srt.layers import sampler as sampler_module

    factories = sampler_module._CUSTOM_SAMPLER_FACTORIES
    monkeypatch.setitem(factories, "pytorch", sampler_module.Sampler)
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "1")
    with pytest.raises(HapoSamplerNotInstalledError, match="Refusing to start"):
        sampler_module.create_sampler("pytorch")
    monkeypatch.delenv("HAPO_SGLANG_SAMPLER")
    assert type(sampler_module.create_sampler("pytorch")) is sampler_module.Sampler  # not requested: fine


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(speculative_algorithm="EAGLE"), "speculative decoding"),
        (dict(enable_watermark=True), "watermarking"),
    ],
)
def test_unsupported_configurations_are_refused(args, message):
    with pytest.raises(HapoSamplerNotInstalledError, match=message):
        plugin.check_supported(SimpleNamespace(**args))


def test_refuses_when_a_hook_was_not_applied(registered, monkeypatch):
    """An SGLang upgrade that renames a hooked method: HookRegistry only logs; the factory refuses."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    monkeypatch.setattr(HookRegistry, "_patched", HookRegistry._patched - {plugin.hook_targets()[0]})
    with pytest.raises(HapoSamplerNotInstalledError, match="adjusted_from_schedule_batch"):
        plugin.make_hapo_sampler()


def test_original_logprob_mode_is_refused(monkeypatch):
    from sglang.srt.layers import sampler as sampler_module

    monkeypatch.setattr(sampler_module, "SGLANG_RETURN_ORIGINAL_LOGPROB", True)
    with pytest.raises(HapoSamplerNotInstalledError, match="SGLANG_RETURN_ORIGINAL_LOGPROB"):
        plugin.check_supported(SimpleNamespace())


def test_request_validation(registered, monkeypatch):
    from sglang.srt.sampling.sampling_params import SamplingParams

    from megatron_hapo.rollout.sampler_wire import encode_request
    from megatron_hapo.rollout.types import AdaptiveTemperature
    from sglang_ext import HapoParamsError

    def verify(custom_params):
        params = SamplingParams(custom_params=custom_params, max_new_tokens=1)
        params.normalize(None)
        params.verify(100)  # hooked: the tokenizer side validates before the request is queued

    monkeypatch.delenv("HAPO_SGLANG_SAMPLER", raising=False)
    verify(None)
    verify({"hapo": {"enabled": False}})
    with pytest.raises(ValueError, match="does not run the HAPO sampler"):
        verify(encode_request(AdaptiveTemperature()))
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "1")
    verify(encode_request(AdaptiveTemperature()))
    with pytest.raises(HapoParamsError, match="tau"):
        verify({"hapo": {"enabled": True, "tau": 3.0}})


def test_register_failure_is_fatal_only_when_hapo_was_requested(monkeypatch):
    def broken():
        raise ImportError("schedule missing")

    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr(plugin, "_register", broken)
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "1")
    with pytest.raises(SystemExit, match="failed to load"):  # SGLang's loader only logs Exceptions
        plugin.register()
    monkeypatch.delenv("HAPO_SGLANG_SAMPLER")
    with pytest.raises(ImportError):
        plugin.register()
    monkeypatch.setenv("HAPO_SGLANG_SAMPLER", "maybe")
    with pytest.raises(SystemExit, match="HAPO_SGLANG_SAMPLER"):
        plugin.register()
