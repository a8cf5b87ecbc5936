#!/usr/bin/env bash
# One node, N processes: bash examples/launch/train_torchrun.sh CONFIG NPROC [key=value ...]
# e.g. bash examples/launch/train_torchrun.sh examples/configs/tiny_cpu.yaml 2 parallel.tensor_model_parallel_size=2
set -euo pipefail
CONFIG=${1:?usage: train_torchrun.sh CONFIG NPROC [key=value ...]}
NPROC=${2:?usage: train_torchrun.sh CONFIG NPROC [key=value ...]}
shift 2
# A stop (SIGTERM/SIGINT) lets the step in progress finish and saves it; torchrun forwards its SIGTERM to the
# workers, then SIGKILLs them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (30 by default): give them a step
# and a save (docs/guide.md, section 6). A torch whose torchrun has no --shutdown-timeout ignores it.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-1800}
# TORCHDYNAMO_DISABLE is left as it is: on a CPU-only host the trainer sets it itself (parallel/cpu_compat.py);
# on GPUs Megatron's fused kernels (jit_fuser) and the SGLang servers the trainer starts compile, as upstream.
exec python -m torch.distributed.run --standalone --nproc-per-node="$NPROC" \
    -m megatron_hapo.trainer --config "$CONFIG" "$@"
