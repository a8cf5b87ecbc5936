#!/usr/bin/env bash
# On the development machine (which reaches PyPI): download what the GPU image lacks into .gpu_wheels/
# (git-ignored); the device tool carries it: run(..., carry=[".gpu_wheels"]).
#
# The GPU image (/work/.library/device/KINDS.md) has Python 3.12, torch 2.11 + CUDA 13, triton 3.6,
# transformers 5.17, safetensors, pyyaml, numpy, packaging, tqdm, pytest and pytest-timeout, and lacks
# megatron-core, omegaconf, sglang and Transformer Engine. Only the first two are brought: their other
# requirements are on the image (megatron-core: torch, numpy, packaging>=24.2; omegaconf: PyYAML; it
# vendors its antlr runtime). Nothing else, so the image's own pytest and plugins stay as they are. SGLang and TE are
# too large to bring; the GPU run reports what needs them as not run.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu_wheels && mkdir -p .gpu_wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu_wheels \
  megatron-core==0.19.2 omegaconf==2.4.0
# Requirements of the two, as their METADATA states them (extras left out): each must be on the image or here.
for w in .gpu_wheels/*.whl; do
  echo "== $(basename "$w")"
  unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
ls -la .gpu_wheels
du -sh .gpu_wheels
