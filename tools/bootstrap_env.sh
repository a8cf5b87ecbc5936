#!/usr/bin/env bash
# Creates (or reuses) the project's CPU virtual environment and installs everything into it.
# Used by `make demo` and `make test`; idempotent and ~1 s when nothing changed.
#
# Order matters (docs/install.md explains each step):
#   1. torch==2.13.0 first (the CPU wheel on Python 3.11), then every later step runs with
#      requirements/constraints-cpu.txt so that no dependency can pull a CUDA build of torch;
#   2. the pinned pure-python dependencies (requirements/cpu.txt, including nvidia-modelopt for the FP8 export);
#   3. megatron-core 0.19.2 with --no-deps --ignore-requires-python: it declares Requires-Python >=3.12
#      but ships a cp311 wheel that works (only megatron/training/models uses 3.12's typing.override);
#   4. sglang 0.5.23 with --no-deps: its metadata pins CUDA torch 2.14.1 and ~20 CUDA kernel packages;
#   5. this project, editable, with --no-deps (its install_requires would re-resolve 3. and 4.);
#   6. the CPU-only import shims for SGLang (only when torch has no CUDA);
#   7. byte-compiling the environment on every core (pip installs with --no-compile), and a check that no
#      Transformer Engine / apex is present (a half-installed TE breaks megatron.core).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
CONSTRAINTS="$ROOT/requirements/constraints-cpu.txt"
MEGATRON_CORE="megatron-core==0.19.2"
SGLANG="sglang==0.5.23"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

stamp_inputs() {
  cat "$0" "$ROOT/requirements/"*.txt "$ROOT/setup.py" "$ROOT/tools/cpu_shims/"*.py
}
STAMP_FILE="$VENV/.hapo-bootstrap-stamp"
want_stamp="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$want_stamp" && -x "$VENV/bin/python" ]]; then
  exit 0   # already set up from exactly these inputs
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  log "ERROR: $PYTHON not found. This environment needs Python 3.11 (the CPU torch 2.13.0 wheel exists only"
  log "for 3.11 here). Install it, or point PYTHON=/path/to/python3.11 at one."
  exit 1
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# pip, minus the "Location ... is ignored" notices some machines' pip config produces on every call.
# --no-compile: pip byte-compiles each package on one core as it installs it (~60 s of a ~130 s bootstrap on
# 2 cores); step 7 compiles the whole environment once, on every core, instead (~33 s).
pip_install() {
  local out rc=0
  out="$("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet --no-compile "$@" 2>&1)" || rc=$?
  printf '%s\n' "$out" | grep -v -e "is ignored: it is neither a file nor a directory" -e '^$' >&2 || true
  return $rc
}
start=$SECONDS

log "1/7 torch==2.13.0 (CPU build)"
pip_install "torch==2.13.0" "setuptools>=70" wheel
if "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)'; then :; else
  log "ERROR: the torch in $VENV is a CUDA build; this bootstrap is for CPU machines. On a GPU cluster follow"
  log "the cluster install in README.md (NGC container, pip install -e .[gpu])."
  exit 1
fi

log "2/7 pinned dependencies (requirements/cpu.txt)"
pip_install -c "$CONSTRAINTS" -r "$ROOT/requirements/cpu.txt"

log "3/7 $MEGATRON_CORE (--no-deps --ignore-requires-python)"
pip_install --no-deps --ignore-requires-python "$MEGATRON_CORE"

log "4/7 $SGLANG (--no-deps)"
pip_install --no-deps "$SGLANG"

log "5/7 megatron-hapo (editable, --no-deps)"
pip_install --no-deps --no-build-isolation -e "$ROOT"

log "6/7 CPU import shims for SGLang"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$SITE/zz_hapo_sglang_cpu_shims.pth"
if "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  rm -f "$PTH"
  log "   CUDA present: shims not installed"
else
  # A .pth runs at every interpreter start, so SGLang's spawned scheduler processes get the shims too.
  printf '%s\nimport hapo_sglang_cpu_shims; hapo_sglang_cpu_shims.install()\n' "$ROOT/tools/cpu_shims" > "$PTH"
fi

log "7/7 byte-compile (every core), checks"
# Without .pyc files every process start (hundreds in the tests: torchrun ranks, SGLang schedulers) would
# compile torch & co. from source, and not even cache it where PYTHONDONTWRITEBYTECODE is set. compileall's
# exit status is ignored: a few test files in torch use Python 3.12 syntax (pip skips them the same way).
"$VENV/bin/python" -m compileall -q -j 0 "$SITE" > /dev/null 2>&1 || true
"$VENV/bin/python" -W ignore - <<'PY'
import importlib.metadata as md, sys
bad = [d for d in ("transformer-engine", "transformer_engine", "transformer-engine-torch", "apex")
       if any(x.metadata["Name"].lower().replace("_", "-") == d.replace("_", "-") for x in md.distributions())]
if bad:
    sys.exit(f"[bootstrap] ERROR: {bad} installed in a CPU environment; a partial Transformer Engine breaks "
             "`import megatron.core` and PyPI 'apex' is not NVIDIA apex. Remove them: pip uninstall -y " + " ".join(bad))
import torch, megatron.core, sglang, megatron_hapo  # noqa: F401  (fails loudly if the environment is broken)
assert torch.__version__.startswith("2.13.0"), torch.__version__
# nvidia-modelopt (FP8 serving export) must not have dragged in another torch; check it is there by metadata
# (importing modelopt.torch costs ~10 s).
assert md.version("nvidia-modelopt") == "0.47.0", md.version("nvidia-modelopt")
print(f"[bootstrap] ok: torch {torch.__version__}, megatron-core {megatron.core.__version__}, sglang {sglang.__version__}", file=sys.stderr)
PY
echo "$want_stamp" > "$STAMP_FILE"
log "done in $((SECONDS - start)) s"
