"""Issue 20 item 5: each launched server gets GPUs of its own, never a training rank's, and a node that
cannot hold them is refused; the in-process engine's share of a GPU it shares with training is bounded at
config time. On CPU: the arguments and environment each server is started with (a real child process)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from megatron_hapo.config import ConfigError, load_config
from megatron_hapo.config.plan import PlanError, render_plan
from megatron_hapo.rollout.fleet import FleetConfig, free_ports, server_launch
from megatron_hapo.rollout.placement import server_gpus, visible_devices
from megatron_hapo.rollout.processes import spawn_server
from megatron_hapo.rollout.types import EngineError
from tests.config.test_dry_run import RECIPE


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_servers_get_disjoint_gpus_after_the_training_ranks():
    # 8 GPUs, 4 training ranks on GPUs 0-3: two TP-2 servers on 4-5 and 6-7
    assert server_gpus(2, 2, node_gpus=8, training_gpus=4) == [[4, 5], [6, 7]]
    assert server_gpus(3, 1, node_gpus=4, training_gpus=1) == [[1], [2], [3]]


def test_a_node_without_room_is_refused_with_the_way_out():
    with pytest.raises(
        EngineError, match=r"8 GPU\(s\) and its training ranks use 4.*need 6 more.*nodes of its own"
    ):
        server_gpus(3, 2, node_gpus=8, training_gpus=4)


def test_each_server_is_started_with_its_own_gpus_in_its_environment(tmp_path):
    cfg = FleetConfig(model_path="/m", num_servers=2, tp_size=2, server_gpus=((4, 5), (6, 7)))
    launches = [server_launch(cfg, k, 30000 + k, None, on_gpu=True) for k in range(2)]
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in launches] == ["4,5", "6,7"]
    for cmd, _ in launches:
        assert _flag(cmd, "--tp-size") == "2" and _flag(cmd, "--base-gpu-id") == "0"
        assert "--mem-fraction-static" not in cmd  # no CPU sizing on a GPU node (the trainer passes it)
    # under a trainer that sees only some of the machine's GPUs, the server's are picked from those
    assert visible_devices([4, 5], {"CUDA_VISIBLE_DEVICES": "0,1,2,3,8,9,10,11"}) == "8,9"
    with pytest.raises(EngineError, match="shows 2 GPU"):
        visible_devices([4, 5], {"CUDA_VISIBLE_DEVICES": "0,1"})
    with pytest.raises(EngineError, match="TP size is 2"):
        server_launch(FleetConfig(tp_size=2, server_gpus=((1,),)), 0, 1, None, on_gpu=True)
    # without an assignment (CPU), nothing is set; the CPU arguments are
    cmd, env = server_launch(FleetConfig(model_path="/m"), 0, 30000, None, on_gpu=False)
    assert env == {} and _flag(cmd, "--device") == "cpu" and "--base-gpu-id" not in cmd
    # and a real child process started the way the fleet starts a server sees exactly its GPUs
    log = tmp_path / "server.log"
    child = spawn_server(
        [sys.executable, "-c", "import os; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'])"], log,
        env=launches[1][1],
    )  # fmt: skip
    assert child.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while "CVD=" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "CVD=6,7" in log.read_text()


def test_inprocess_engine_share_of_a_training_gpu_is_bounded():
    with pytest.raises(ConfigError, match=r"in-process engine shares.*rollout.engine=fleet"):
        load_config(RECIPE, ["rollout.engine=inprocess", "rollout.mem_fraction=0.8"], check_env=False)
    small = load_config(RECIPE, ["rollout.engine=inprocess"], check_env=False)
    assert small.rollout.mem_fraction == 0.3  # null resolves per engine
    fleet = load_config(RECIPE, [], check_env=False)  # the recipe's fleet
    assert fleet.rollout.engine == "fleet" and fleet.rollout.mem_fraction == 0.85


def test_sync_policies_other_than_wait_need_a_fleet():
    with pytest.raises(ConfigError, match=r"sync_policy=pause needs rollout.engine=fleet"):
        load_config(RECIPE, ["rollout.engine=inprocess", "rollout.sync_policy=pause"], check_env=False)
    cfg = load_config(RECIPE, ["rollout.sync_policy=abort"], check_env=False)  # the recipe's fleet
    assert cfg.rollout.sync_policy == "abort"


def test_dry_run_counts_the_inprocess_engine_on_the_training_gpu():
    cfg = load_config(RECIPE, ["rollout.engine=inprocess", "rollout.mem_fraction=0.5"], check_env=False)
    plan = render_plan(cfg, world_size=8, gpu_gib=1000.0)
    assert "500.00 GiB (in-process engine, rollout.mem_fraction)" in plan
    with pytest.raises(PlanError, match="rollout.engine=fleet"):
        render_plan(cfg, world_size=8, gpu_gib=_fits_without_engine(cfg))


def _fits_without_engine(cfg) -> float:
    """A GPU size where training alone fits but training + the engine's half does not."""
    from megatron_hapo.config.plan import GiB, memory_plan, model_arch

    total = memory_plan(cfg, model_arch(cfg), dp=8).total / GiB
    return total * 1.5


def test_servers_started_together_get_distinct_free_ports():
    ports = free_ports(16)
    assert len(set(ports)) == 16
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert max(ports) < ephemeral_low  # not where outgoing connections take their source ports
    for port in ports:  # and free now
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))
    cmd, _ = server_launch(FleetConfig(model_path="/m"), 0, 30000, None, on_gpu=False, nccl_port=ports[0])
    assert _flag(cmd, "--nccl-port") == str(ports[0])
    assert "--nccl-port" not in server_launch(FleetConfig(model_path="/m"), 0, 30000, None, on_gpu=False)[0]
