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
# What tests/trainer/test_learn_step.py needs beyond torch (config, tiny HF models), with their own
# dependencies resolved for Python 3.12 (untested on the GPU image so far: check the import line in the log)
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu_wheels transformers==5.19.0 tokenizers==0.23.2 safetensors==0.8.0 huggingface_hub==1.33.0 \
  omegaconf==2.4.0 pyyaml==6.0.3
rm -f .gpu_wheels/torch-* .gpu_wheels/numpy-* .gpu_wheels/nvidia_* .gpu_wheels/triton-*  # the image's own
ls -la .gpu_wheels
