#!/usr/bin/env bash
# On a GPU machine: the GPU test subset and the GPU benchmarks, with a results file.
#
#   bash benchmarks/gpu/fetch_wheels.sh            # on the dev machine, once (needs PyPI)
#   bash benchmarks/gpu/run_all.sh                 # on the GPU machine (device tool: carry .gpu_wheels)
#
# Writes $OUT (default benchmarks/gpu/out/) : results.md plus one log per step. SGLang's CUDA kernels and
# Transformer Engine are not on the GPU image and too large to bring, so SGLang-on-GPU and TE FP8 are
# reported as not run, never as passed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/benchmarks/gpu/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
RESULTS="$OUT/results.md"

if compgen -G ".gpu_wheels/*.whl" >/dev/null; then
  "$PY" -m pip install --quiet --no-deps --no-index .gpu_wheels/*.whl 2>&1 | tail -2
fi

{
  echo "# GPU run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' 2>&1
  echo '```'
} > "$RESULTS"

step() {  # step NAME COMMAND...: run, keep the log, record pass/fail and the log's tail
  local name=$1; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  { echo; echo "## $name (rc=$rc, $((SECONDS - start)) s)"; echo; echo "\`$*\`"; echo; echo '```';
    tail -n 40 "$OUT/$name.log"; echo '```'; } >> "$RESULTS"
  echo "[gpu] $name rc=$rc"
}

# Only the GPU test files: the other test modules import packages (sglang, omegaconf, ...) absent there.
step pytest_gpu "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ops/test_gpu_kernels.py $(ls -d tests/gpu 2>/dev/null)
# one HAPO update on CUDA (bf16, NCCL) from a fixed batch, and Megatron on CUDA vs HF on CPU: needs the
# config/transformers wheels of fetch_wheels.sh
step pytest_gpu_trainer "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/trainer/test_learn_step.py
step bench_logprob_entropy "$PY" benchmarks/bench_logprob_entropy.py --device cuda
if "$PY" -c "import sglang" 2>/dev/null; then
  step bench_sampler "$PY" benchmarks/bench_sampler.py --device cuda --truncation
else
  echo -e "\n## bench_sampler: not run (sglang is not installed on this GPU image)" >> "$RESULTS"
fi
echo "[gpu] results: $RESULTS"
