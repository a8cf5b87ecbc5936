#!/usr/bin/env bash
# One node, N processes: bash examples/launch/train_torchrun.sh CONFIG NPROC [key=value ...]
# e.g. bash examples/launch/train_torchrun.sh examples/configs/tiny_cpu.yaml 2 parallel.tensor_model_parallel_size=2
set -euo pipefail
CONFIG=${1:?usage: train_torchrun.sh CONFIG NPROC [key=value ...]}
NPROC=${2:?usage: train_torchrun.sh CONFIG NPROC [key=value ...]}
shift 2
export TORCHDYNAMO_DISABLE=${TORCHDYNAMO_DISABLE:-1}
exec python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" \
    -m megatron_hapo.trainer --config "$CONFIG" "$@"
