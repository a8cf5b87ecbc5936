"""``rollout.server_args``: more SGLang ServerArgs fields for the engines, checked against SGLang's own declaration
(names, types, choices) at config time, passed to the in-process engine as values and to launched servers on a
command line that SGLang's own parser reads back as given. A real engine's and a real fleet's read-back:
tests/trainer/test_train_e2e.py (the run's log) and tests/rollout/test_fleet.py (``server_settings``)."""

from __future__ import annotations

import argparse

import pytest

from megatron_hapo.config import ConfigError, load_config
from megatron_hapo.rollout.fleet import FleetConfig, server_launch
from megatron_hapo.rollout.serving import engine_server_args, settings_differing
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


def test_attached_servers_take_theirs_on_their_own_command_line():
    with pytest.raises(ConfigError, match=r"reach only the servers this run launches.*HAPO_SGLANG_ARGS"):
        load_config(RECIPE, ["rollout.server_args.chunked_prefill_size=8192"], check_env=False)  # attached


def test_settings_sglang_changed_are_named_per_engine():
    asked = {"chunked_prefill_size": "8192", "cuda_graph_bs_decode": [1, 2]}
    same = {"chunked_prefill_size": 8192, "cuda_graph_bs_decode": (1, 2)}  # as SGLang reports them
    assert settings_differing(asked, [same, same]) == []
    changed = dict(same, chunked_prefill_size=4096)
    assert settings_differing(asked, [same, changed]) == [
        "chunked_prefill_size: asked 8192, engine 1 runs with 4096"
    ]
