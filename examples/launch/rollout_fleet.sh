#!/usr/bin/env bash
# The rollout fleet of a recipe (rollout.engine=fleet), on nodes of their own:
#   every rollout node:  bash examples/launch/rollout_fleet.sh servers MODEL_PATH NUM_SERVERS TP [FIRST_PORT]
#   one of them, after:  bash examples/launch/rollout_fleet.sh router PORT http://node-a:30001 http://node-a:30002 ...
# then train with rollout.router_address=http://<router host>:PORT (or HAPO_ROLLOUT_ROUTER) and
# rollout.server_addresses=[...] so that weight updates reach every server.
# Servers run the HAPO sampler (HAPO_SGLANG_SAMPLER=1; megatron-hapo must be installed on these nodes: the
# sampler is an SGLang plugin) and start with the checkpoint's weights; the trainer pushes its own before
# the first rollout. NUM_SERVERS x TP GPUs are used, server i on GPUs i*TP .. i*TP+TP-1, HTTP port PORT+i,
# and PORT+100+i for its internal process group (servers started together would otherwise draw their own
# at random, and two can draw the same).
# Security (docs/security.md): servers and router listen on HAPO_BIND_HOST (this node's address on the
# cluster's private network; required, so that opening them is a decision) and need the API key in
# HAPO_ROLLOUT_API_KEY on every call; export the same variable for the trainer (rollout.api_key_env). The
# key reaches the servers through a 0600 file, not their command line. The router's metrics stay on loopback.
# A mixture of experts trained with algorithm.rollout_routing_replay=true needs its servers to record every
# token's experts: HAPO_ROUTING_REPLAY=1 adds --enable-return-routed-experts (a response without them fails the step).
# More SGLang arguments for every server (what rollout.server_args gives the servers a run launches itself):
# HAPO_SGLANG_ARGS="--chunked-prefill-size 8192 --ep-size 8".
set -euo pipefail
HOST=${HAPO_BIND_HOST:?set HAPO_BIND_HOST to the address of this node on the cluster network}
: "${HAPO_ROLLOUT_API_KEY:?set HAPO_ROLLOUT_API_KEY (e.g. openssl rand -hex 32) here and for the trainer}"
MODE=${1:?usage: rollout_fleet.sh servers MODEL NUM TP [PORT] | router PORT URL...}
shift
case "$MODE" in
servers)
    MODEL=${1:?model path}; NUM=${2:?number of servers}; TP=${3:?TP per server}; PORT=${4:-30001}
    export HAPO_SGLANG_SAMPLER=1
    EXTRA=()
    [ "${HAPO_ROUTING_REPLAY:-0}" = 1 ] && EXTRA+=(--enable-return-routed-experts)
    read -r -a USER_ARGS <<<"${HAPO_SGLANG_ARGS:-}"
    EXTRA+=(${USER_ARGS[@]+"${USER_ARGS[@]}"})
    mkdir -p logs
    KEY_FILE=logs/.sglang_api_key.yaml
    (umask 077 && printf 'api-key: %s\n' "$HAPO_ROLLOUT_API_KEY" >"$KEY_FILE")
    for ((i = 0; i < NUM; i++)); do
        GPUS=$(seq -s, $((i * TP)) $((i * TP + TP - 1)))
        CUDA_VISIBLE_DEVICES=$GPUS nohup python -m sglang.launch_server --model-path "$MODEL" \
            --host "$HOST" --port $((PORT + i)) --nccl-port $((PORT + 100 + i)) --tp-size "$TP" --random-seed $((1000 + i)) --sleep-on-idle --config "$KEY_FILE" ${EXTRA[@]+"${EXTRA[@]}"} \
            >"logs/sglang_server_$i.log" 2>&1 &
        echo "server $i: http://$HOST:$((PORT + i)) on GPUs $GPUS (log: logs/sglang_server_$i.log)"
    done
    wait
    ;;
router)
    PORT=${1:?router port}; shift
    [ "$#" -gt 0 ] || { echo "give the servers' URLs" >&2; exit 2; }
    exec python -m sglang_router.launch_router --host "$HOST" --port "$PORT" --worker-urls "$@" \
        --prometheus-port $((PORT + 1000)) --prometheus-host 127.0.0.1
    ;;
*) echo "unknown mode $MODE (servers | router)" >&2; exit 2 ;;
esac
