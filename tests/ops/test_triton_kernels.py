"""Run the Triton kernel checks in Triton's CPU interpreter, in a subprocess.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the checks (``triton_interpret_cases.py``)
run in their own pytest process; this keeps the main test process free of the interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("triton_interpret_cases.py")


def test_triton_kernels_in_interpreter():
    if importlib.util.find_spec("triton") is None:  # not imported here: the interpreter flag must come first
        pytest.skip("triton is not installed; the Triton kernels cannot be checked")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", TORCHDYNAMO_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"Triton interpreter checks failed (rc={proc.returncode}):\n{out[-6000:]}"
    assert " passed" in out and "skipped" not in out, out[-2000:]
