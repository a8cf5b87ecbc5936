"""Fleet settings that need no server: the config rule for distributed sync across machines, and the
API key kept out of logs and configs."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from megatron_hapo.config import collect_issues
from megatron_hapo.config.loader import compose
from megatron_hapo.rollout.fleet import FleetConfig

REQUIRED = ["model.hf_path=m", "data.train_files=[t.jsonl]", "rollout.engine=fleet", "rollout.num_servers=2"]


def issues(*overrides):
    loaded = compose(None, [*REQUIRED, *overrides])
    return collect_issues(loaded.cfg, world_size=8, origins=loaded.origins, check_env=False)


REMOTE = "rollout.server_addresses=[http://10.0.0.7:30001,http://10.0.0.7:30002]"
LOCAL = "rollout.server_addresses=[http://127.0.0.1:30001,http://localhost:30002]"


@pytest.mark.parametrize(
    "overrides, refused",
    [
        ((REMOTE,), True),  # the default sync_address (loopback) cannot be reached from 10.0.0.7
        ((REMOTE, "rollout.sync_address=10.0.0.1"), False),
        ((REMOTE, "rollout.weight_sync=disk"), False),
        ((LOCAL,), False),
        (("rollout.launch_servers=true",), False),
    ],
)
def test_distributed_sync_to_other_machines_needs_a_reachable_sync_address(overrides, refused):
    found = [i for i in issues(*overrides) if "weight-sync broadcast" in i.message]
    assert bool(found) == refused
    if refused:
        (issue,) = found
        assert issue.key.startswith("rollout.sync_address") and "10.0.0.7" in issue.message
        assert "rollout.weight_sync=disk" in issue.message  # the way forward


def test_api_key_is_not_in_the_config_nor_in_the_fleet_config_repr(caplog):
    loaded = compose(None, REQUIRED)
    rollout_keys = {f.name for f in dataclasses.fields(loaded.cfg.rollout)}
    assert "api_key" not in rollout_keys  # the config names the variable that holds the key, never the key
    assert loaded.cfg.rollout.api_key_env == "HAPO_ROLLOUT_API_KEY"
    cfg = FleetConfig(attach_urls=("http://127.0.0.1:1",), api_key="s3cret-key")
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("fleet config: %r", cfg)
    assert "s3cret-key" not in caplog.text and "api_key='***'" in caplog.text
