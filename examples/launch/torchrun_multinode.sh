#!/usr/bin/env bash
# Several nodes without Slurm: run this on every training node (same arguments, its own NODE_RANK).
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=train-0 bash examples/launch/torchrun_multinode.sh CONFIG [key=value ...]
# GPUS_PER_NODE (default 8) processes per node; the config's cluster.nodes is set from NNODES so the
# layout check (TP x PP x CP x DP = world size) sees the real world.
set -euo pipefail
CONFIG=${1:?usage: NNODES=.. NODE_RANK=.. MASTER_ADDR=.. torchrun_multinode.sh CONFIG [key=value ...]}
shift
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
# A stop (SIGTERM/SIGINT) lets the step in progress finish and saves it; torchrun forwards its SIGTERM to the
# workers, then SIGKILLs them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (30 by default): give them a step
# and a save (docs/guide.md, section 6). A torch whose torchrun has no --shutdown-timeout ignores it.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-1800}
# TORCHDYNAMO_DISABLE is left as it is: on a CPU-only host the trainer sets it itself (parallel/cpu_compat.py);
# on GPUs Megatron's fused kernels (jit_fuser) and the SGLang servers the trainer starts compile, as upstream.
exec python -m torch.distributed.run \
    --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="${GPUS_PER_NODE:-8}" \
    --master-addr="$MASTER_ADDR" --master-port="${MASTER_PORT:-29500}" \
    -m megatron_hapo.trainer --config "$CONFIG" cluster.nodes="$NNODES" "$@"
