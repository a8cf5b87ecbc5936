"""``rollout.server_args``: more SGLang ServerArgs fields for the engines, checked against SGLang's own declaration
(names, types, choices) at config time, passed to the in-process engine as values and to launched servers on a
command line that SGLang's own parser reads back as given. A real engine's and a real fleet's read-back:
tests/trainer/test_train_e2e.py (the run's log) and tests/rollout/test_fleet.py (``server_settings``)."""

from __future__ import annotations

import argparse
from dataclasses import replace

import pytest

from megatron_hapo.config import ConfigError, load_config
from megatron_hapo.rollout.fleet import FleetConfig, server_launch
from megatron_hapo.rollout.serving import (
    attached_server_problems,
    engine_server_args,
    fleet_config,
    required_server_settings,
    settings_differing,
)
from tests.config.test_dry_run import RECIPE

LAUNCHED = ["rollout.launch_servers=true", "rollout.server_addresses=[]", "rollout.router_address=null"]
GIVEN = (
    'rollout.server_args={chunked_prefill_size: "8192", schedule_policy: lpm, enable_cache_report: true, '
    "cuda_graph_bs_decode: [1, 2, 4], default_chat_template_kwargs: {enable_thinking: false}}"
)


def test_server_args_reach_the_engine_as_values_of_sglangs_types():
    cfg = load_config(RECIPE, [*LAUNCHED, GIVEN], check_env=False)
    args = engine_server_args(cfg)
    assert args["chunked_prefill_size"] == 8192 and isinstance(args["chunked_prefill_size"], int)
    assert args["schedule_policy"] == "lpm" and args["enable_cache_report"] is True
    assert args["cuda_graph_bs_decode"] == [1, 2, 4]
    assert args["dtype"] == cfg.model.dtype  # the project's own fields are still set


def test_a_launched_servers_command_line_reads_back_as_given_by_sglangs_parser():
    from sglang.srt.server_args import ServerArgs

    cfg = load_config(RECIPE, [*LAUNCHED, GIVEN], check_env=False)
    cmd, _ = server_launch(
        FleetConfig(model_path="/m", server_args=engine_server_args(cfg)), 0, 30000, None, False
    )
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    parsed = parser.parse_args(cmd[3:])
    assert parsed.chunked_prefill_size == 8192 and parsed.schedule_policy == "lpm"
    assert parsed.enable_cache_report is True and parsed.cuda_graph_bs_decode == [1, 2, 4]
    assert parsed.default_chat_template_kwargs == {"enable_thinking": False}  # a mapping goes as JSON
    assert parsed.sleep_on_idle is True and parsed.port == 30000  # ours, beside them


def test_bad_server_args_are_refused_naming_the_key_and_the_way_out():
    bad = [
        "rollout.server_args.chunked_prefil_size=8192",  # a typo
        "rollout.server_args.tp_size=2",  # ours
        "rollout.server_args.schedule_policy=fastest",
        "rollout.server_args.ep_size=eight",
        "rollout.server_args.enable_lora=false",  # absent flag = SGLang's default (None), not false
    ]
    with pytest.raises(ConfigError) as e:
        load_config(RECIPE, [*LAUNCHED, *bad], check_env=False)
    issues = {i.key: i.message for i in e.value.issues}
    assert "did you mean chunked_prefill_size" in issues["rollout.server_args.chunked_prefil_size"]
    assert "from rollout.tensor_parallel_size" in issues["rollout.server_args.tp_size"]
    assert "not one of lpm, random, fcfs" in issues["rollout.server_args.schedule_policy"]
    assert "Expected `int`" in issues["rollout.server_args.ep_size"]
    assert "leave it out or set true" in issues["rollout.server_args.enable_lora"]
    assert len(issues) == len(bad)


def _as_sglang_parses(cmd: list[str]) -> dict:
    """What a server started with ``cmd`` reports in ``/server_info``: its ServerArgs fields."""
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return vars(parser.parse_args(cmd[3:]))


def test_attached_servers_must_run_as_the_config_launches_them():
    """The recipe attaches to servers on nodes of their own. Those hapo-serve starts from the same config pass the
    trainer's check; a stock server (the model and the key only) is refused, each field naming its config key."""
    attached = [GIVEN, "model.override_config={rope_theta: 50000.0}", "rollout.tensor_parallel_size=2"]
    cfg = load_config(RECIPE, attached, check_env=False)
    required = required_server_settings(cfg)
    assert required["tp_size"] == 2 and required["quantization"] is None and "load_format" not in required
    # (without the sampler's flag: the plugin adds its choice to SGLang's parser only in a server)
    served, _ = server_launch(
        replace(fleet_config(cfg, run_dir=None), hapo_sampler=False), 0, 30001, None, False
    )
    assert attached_server_problems(required, [_as_sglang_parses(served)], ["http://a:30001"]) == []
    # the overrides as SGLang reports them, formatted otherwise: the same JSON
    spaced = dict(_as_sglang_parses(served), json_model_override_args='{ "rope_theta" : 50000.0 }')
    assert attached_server_problems(required, [spaced], ["http://a:30001"]) == []

    stock = _as_sglang_parses(
        ["python", "-m", "sglang.launch_server", "--model-path", "/m", "--tp-size", "2"]
    )
    problems = attached_server_problems(required, [spaced, stock], ["http://a:30001", "http://b:30001"])
    assert all(p.startswith("http://b:30001 runs with ") for p in problems), problems
    named = {p.split(" runs with ")[1].split("=")[0]: p for p in problems}
    assert "dtype='auto', the run needs 'bfloat16' (model.dtype)" in named["dtype"]
    assert "(model.override_config)" in named["json_model_override_args"]
    assert "the run needs 8192 (rollout.server_args.chunked_prefill_size)" in named["chunked_prefill_size"]
    assert set(named) == {"dtype", "json_model_override_args", *cfg.rollout.server_args}  # tp_size matches
    # FP8 rollout on bf16 servers: the trainer would take the engine for quantised
    fp8 = required_server_settings(load_config(RECIPE, ["rollout.quantization=fp8"], check_env=False))
    problems = attached_server_problems(fp8, [_as_sglang_parses(served)], ["http://a:30001"])
    assert (
        "http://a:30001 runs with quantization=None, the run needs 'fp8' (rollout.quantization)" in problems
    )


def test_settings_sglang_changed_are_named_per_engine():
    asked = {"chunked_prefill_size": "8192", "cuda_graph_bs_decode": [1, 2]}
    same = {"chunked_prefill_size": 8192, "cuda_graph_bs_decode": (1, 2)}  # as SGLang reports them
    assert settings_differing(asked, [same, same]) == []
    changed = dict(same, chunked_prefill_size=4096)
    assert settings_differing(asked, [same, changed]) == [
        "chunked_prefill_size: asked 8192, engine 1 runs with 4096"
    ]
