"""Finding the SGLang servers a run launched (to kill one on purpose)."""

from __future__ import annotations

from pathlib import Path


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
