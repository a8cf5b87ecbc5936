"""How the trainer starts SGLang processes: without torchrun's variables, and never outliving the trainer.

* An SGLang process that inherits torchrun's ``RANK``/``WORLD_SIZE``/``MASTER_*``/``TORCHELASTIC_*`` tries to
  join the trainer's world in its own ``torch.distributed`` init and hangs (docs/facts.md).
* A launched server must not outlive a trainer that was killed (SIGKILL, OOM): ``atexit`` does not run then,
  and orphaned servers keep their GPUs (or CPU cores) busy. On Linux the child asks the kernel for SIGTERM
  when its parent dies (``PR_SET_PDEATHSIG``); SGLang's own processes follow their server down.
* A stopped server's processes leave files behind (SGLang removes none of them, even on SIGTERM): its
  load-snapshot shared memory and its ZMQ socket files. :func:`stop_server` removes them.
* An in-process engine's processes are the children that appeared while it started
  (:func:`new_child_processes`): its shutdown stops those, not the caller's other children.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.resource_tracker
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

# Variables torchrun sets for the trainer's world.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")  # fmt: skip
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SGLANG_SHM = "/dev/shm/sglang_"  # SGLang's shared-memory files (load snapshots: sglang_loads_*)


def is_launcher_variable(name: str) -> bool:
    return name in LAUNCHER_ENV or name.startswith("TORCHELASTIC_")


def launcher_free_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``environ`` without torchrun's variables: the environment of a server process."""
    return {k: v for k, v in environ.items() if not is_launcher_variable(k)}


@contextlib.contextmanager
def without_launcher_env() -> Iterator[None]:
    """Remove torchrun's variables from this process's environment while an in-process engine starts."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if is_launcher_variable(k)}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def new_child_processes() -> Iterator[list[int]]:
    """Yields a list that, when the block ends (also by an exception), holds the pids of the child processes
    this process started inside it.

    multiprocessing's resource tracker is started first: a spawn inside the block would start it otherwise,
    and it serves the whole process, not what the block started."""
    import psutil

    multiprocessing.resource_tracker.ensure_running()
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    pids: list[int] = []
    try:
        yield pids
    finally:
        pids.extend(p.pid for p in me.children() if p.pid not in before)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def spawn_server(cmd: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so its process group can be stopped as a whole), output to
    ``log_path``, torchrun's variables removed and ``env`` added (its GPUs, its TMPDIR); on Linux it receives
    SIGTERM if this process dies. Stop it with :func:`stop_server`.

    The death signal is tied to the thread that forks (a kernel rule): call this from a thread that lives as
    long as the server should, as the trainer's main thread does."""
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**launcher_free_environ(), **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509 (no threads fork here)
        )


def stop_server(process: subprocess.Popen, tmp_dir: Path | None = None, grace_s: float = 30.0) -> int:
    """Stop the process group of a server :func:`spawn_server` started (SIGTERM, SIGKILL after ``grace_s``)
    and remove what its processes leave behind: the SGLang shared memory they had mapped
    (``/dev/shm/sglang_loads_*``) and ``tmp_dir``, the server's TMPDIR (SGLang's ZMQ socket files). Returns
    the number of files removed."""
    import psutil

    shared = set()
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(process.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                shared |= {m.path for m in p.memory_maps() if m.path.startswith(_SGLANG_SHM)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the server's scheduler children share its session
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s if sig == signal.SIGTERM else None)
            break
    removed = 0
    for path in shared:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
            removed += 1
    if tmp_dir is not None and tmp_dir.is_dir():
        removed += sum(1 for f in tmp_dir.rglob("*") if not f.is_dir())
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return removed
