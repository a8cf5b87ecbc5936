"""Launch a multi-process job with torchrun from a pytest test (gloo on CPU).

Job scripts live in ``tests/dist_jobs/`` (not collected by pytest). A job asserts what it tests and
exits non-zero on failure; every rank runs the same code. ``run_torchrun`` fails the calling test
with the job's output tail, so a failing rank is visible in the pytest report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
JOBS_DIR = Path(__file__).resolve().parent / "dist_jobs"


def run_torchrun(
    job: str | Path, nproc: int, *args: str, timeout: float = 600, env: dict | None = None
) -> str:
    """Run ``torchrun --standalone --nproc-per-node nproc JOB ARGS`` and return its combined output.

    ``job`` is a path or a file name under ``tests/dist_jobs``. Raises ``AssertionError`` (with the
    last 6000 characters of output) when any rank fails or the job outlives ``timeout`` seconds.
    """
    path = Path(job)
    if not path.is_absolute():
        path = JOBS_DIR / path
    full_env = dict(os.environ)
    full_env.update(
        TORCHDYNAMO_DISABLE="1",  # megatron's jit_fuser is torch.compile: slow first calls on CPU
        OMP_NUM_THREADS="1",  # ranks >= cores on a 2-core CI machine
        PYTHONPATH=os.pathsep.join([str(REPO_ROOT), full_env.get("PYTHONPATH", "")]),
    )
    full_env.update(env or {})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(path),
        *map(str, args),
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or "") + (exc.stderr or "")
        out = out.decode() if isinstance(out, bytes) else out
        raise AssertionError(
            f"torchrun job {path.name} x{nproc} timed out after {timeout}s:\n{out[-6000:]}"
        ) from None
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(
            f"torchrun job {path.name} x{nproc} failed (rc={proc.returncode}):\n{out[-6000:]}"
        )
    return out
