#!/usr/bin/env bash
# On the development machine (which reaches PyPI): download the small pure-Python wheels the GPU image
# lacks into .gpu_wheels/ (git-ignored). The device tool carries it: run(..., carry=[".gpu_wheels"]).
# The GPU image has Python 3.12, CUDA torch and Triton but no network, no megatron-core, no pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu_wheels && mkdir -p .gpu_wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform any -d .gpu_wheels \
  megatron-core==0.19.2 pytest==9.2.0 pluggy iniconfig pytest-timeout==2.4.0 packaging
ls -la .gpu_wheels
