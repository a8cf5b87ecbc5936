"""Finding the SGLang servers a run launched (to kill one on purpose); ``hapo-serve`` as a rollout node runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.torchrun_utils import REPO_ROOT

SERVE_CONFIG = "examples/configs/tiny_cpu.yaml"
SERVE_KEY = "k-test-serve-key"  # the fleet's key (rollout.api_key_env: HAPO_ROLLOUT_API_KEY)


def server_pid(run_dir: Path, index: int) -> int | None:
    """The pid of launched server ``index`` of the run (found by its key file, which only it is given)."""
    marker = f"server{index}.secret.yaml"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "sglang.launch_server" in cmd and str(run_dir) in cmd and marker in cmd:
            return int(proc.name)
    return None


def serve_env(**extra: str) -> dict[str, str]:
    """The environment of a hapo-serve or trainer process, without the fleet's key unless ``extra`` gives it."""
    env = {k: v for k, v in os.environ.items() if k != "HAPO_ROLLOUT_API_KEY"}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}


def serve_cmd(policy: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "megatron_hapo.cli.serve",
        "--config",
        SERVE_CONFIG,
        f"model.hf_path={policy}",
        *args,
    ]


@dataclass
class Served:
    """A running ``hapo-serve``: its one server's URL and the command's process and output so far."""

    url: str
    process: subprocess.Popen
    output: list[str]


def start_hapo_serve(policy: Path, log_dir: Path, port: int) -> Served:
    """``hapo-serve`` with one server on ``port``, once it prints the addresses to train with."""
    proc = subprocess.Popen(
        serve_cmd(policy, "--port", str(port), "--log-dir", str(log_dir)), cwd=REPO_ROOT,
        env=serve_env(HAPO_ROLLOUT_API_KEY=SERVE_KEY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"train with: rollout\.server_addresses=\[(\S+)\]", line)
        if match:
            return Served(match[1], proc, lines)
    proc.kill()
    logs = "".join(p.read_text()[-2000:] for p in log_dir.rglob("*.log"))
    raise AssertionError("hapo-serve did not come up:\n" + "".join(lines)[-3000:] + logs)


def stop_hapo_serve(served: Served) -> None:
    """SIGTERM, as a scheduler stops a job: exit 0 and the server gone."""
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
    try:
        out, _ = served.process.communicate(timeout=120)
    finally:
        if served.process.poll() is None:
            served.process.kill()
    assert served.process.returncode == 0, "".join(served.output) + out
    try:
        requests.get(served.url + "/health", timeout=10)
    except requests.ConnectionError:
        return
    raise AssertionError(f"{served.url} still answers after hapo-serve stopped")
