"""The demo's SFT-warmed reasoning policy for ``tests/demo/test_demo_gain.py``, built in the background.

In a clean checkout the policy costs its 1600-step SFT warm-up: about 4 minutes of compute on 2 cores, the
largest single cost of ``make test``. The root conftest starts the build as soon as collection has selected
the gain test (:func:`start`) and moves that test to the end of the run; the build runs meanwhile at the lowest
CPU priority (nice 19), so it takes the cycles the other tests leave idle (they wait on subprocesses, server
starts, polls) rather than theirs. The test then waits for it (:func:`wait`). The build is a session of its own
with that priority: Linux's autogroups (``kernel.sched_autogroup_enabled``) share the CPU between sessions
first and apply a process's nice value only within its session, so a nice 19 process in pytest's session
would still take a full session's share from the fleet servers, which run in sessions of their own. The build is the product's own
(``demo.recipes.build_policy``, on every core, as ``make demo`` runs it), into the directory ``make demo``
uses (``HAPO_DEMO_MODEL`` or ``runs/demo_reasoning_model``): a model already there with the same recipe is
reused at once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_hapo.demo.recipes import TASKS
from tests.torchrun_utils import REPO_ROOT

_BUILD = """
import logging, os, sys
from pathlib import Path
import torch
from megatron_hapo.demo.recipes import build_policy
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the SFT's progress, in the log
torch.set_num_threads(len(os.sched_getaffinity(0)))  # as make demo's warm-up: every core (when idle)
build_policy(Path(sys.argv[1]), task="reasoning")
"""

_build: tuple[subprocess.Popen, Path] | None = None


def model_dir() -> Path:
    return REPO_ROOT / os.environ.get("HAPO_DEMO_MODEL", TASKS["reasoning"][2])


def start() -> None:
    """Start building the policy in a background process at nice 19 (once per session)."""
    global _build
    if _build is not None:
        return
    fd, log = tempfile.mkstemp(prefix="hapo-demo-policy-", suffix=".log")
    # OpenMP threads that sleep while they wait, rather than spin on the cycles the build is lent
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TORCHDYNAMO_DISABLE="1", OMP_WAIT_POLICY="PASSIVE")
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BUILD, str(model_dir())], cwd=REPO_ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_lowest_priority,
        )  # fmt: skip
    _build = (proc, Path(log))


def _lowest_priority() -> None:
    """In the new process (a session of its own): nice 19 for its autogroup and for itself."""
    with contextlib.suppress(OSError):  # no autogroups: the process's own nice value is all there is
        Path("/proc/self/autogroup").write_text("19")
    os.nice(19)


def wait() -> Path:
    """The policy's directory once the background build finished (built by the test's own run when none was
    started); a failed build fails with its log."""
    if _build is not None:
        proc, log = _build
        if proc.wait() != 0:
            raise AssertionError(
                f"building the demo policy failed (exit {proc.returncode}):\n{log.read_text()[-6000:]}"
            )
        log.unlink(missing_ok=True)
    return model_dir()


def stop() -> None:
    """End a build still running (the session ends early)."""
    if _build is not None and _build[0].poll() is None:
        _build[0].kill()
        _build[0].wait()
        _build[1].unlink(missing_ok=True)
