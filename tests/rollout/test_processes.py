"""Processes the trainer launches: no torchrun variables, and they die with a killed trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from megatron_hapo.rollout.processes import launcher_free_environ, without_launcher_env


def test_launcher_variables_are_removed():
    env = {"RANK": "1", "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "0", "PATH": "/bin"}
    assert launcher_free_environ(env) == {"PATH": "/bin"}
    os.environ["TORCHELASTIC_RUN_ID"] = "x"
    try:
        with without_launcher_env():
            assert "TORCHELASTIC_RUN_ID" not in os.environ
        assert os.environ["TORCHELASTIC_RUN_ID"] == "x"
    finally:
        del os.environ["TORCHELASTIC_RUN_ID"]


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_server_does_not_outlive_a_killed_trainer(tmp_path):
    """A 'trainer' spawns a long-running 'server' and is SIGKILLed (no atexit runs): the server goes too."""
    trainer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from megatron_hapo.rollout.processes import spawn_server
            server = spawn_server(["sleep", "120"], Path({str(tmp_path / "server.log")!r}))
            print(server.pid, flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "RANK": "3"},
    )  # fmt: skip
    server_pid = int(trainer.stdout.readline())
    with open(f"/proc/{server_pid}/environ", "rb") as f:
        assert b"RANK=3" not in f.read().split(b"\0")
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(server_pid):
        time.sleep(0.1)
    assert not _alive(server_pid), "the server outlived the trainer"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited (its parent, init, reaps it)
    except FileNotFoundError:
        return False
