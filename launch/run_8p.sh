#!/usr/bin/env bash
# Data-parallel training with msrun: one worker per device, the same command on every node.
#   bash launch/run_8p.sh CONFIG [key=value ...]
# Environment (defaults in brackets):
#   DEVICE_NUM   workers on this node [8]          NNODES     number of nodes [1]
#   NODE_RANK    this node's index [0]             MASTER_ADDR  node 0's address [127.0.0.1]
#   MASTER_PORT  scheduler port on node 0 [8118]   LOG_DIR    per-worker logs [runs/msrun_logs]
#   CLUSTER_TIMEOUT  seconds to wait for all workers to join [600]
# The exit status is the job's: non-zero as soon as any worker fails (msrun --join=True).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [DEVICE_NUM=8 NNODES=1 NODE_RANK=0 MASTER_ADDR=... MASTER_PORT=...] $0 CONFIG [key=value ...]" >&2
  exit 2
fi
CONFIG=$1; shift
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
DEVICE_NUM=${DEVICE_NUM:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-8118}
LOG_DIR=${LOG_DIR:-runs/msrun_logs}
CLUSTER_TIMEOUT=${CLUSTER_TIMEOUT:-600}
ENTRY=$(python -c 'import ddpm_dist.train.__main__ as m; print(m.__file__)')
# Bad configs fail here, once, before any worker starts.
python -m ddpm_dist.train --config "$CONFIG" --dry-run "$@" > /dev/null
mkdir -p "$LOG_DIR"
echo "msrun: $((DEVICE_NUM * NNODES)) workers ($DEVICE_NUM on node $NODE_RANK of $NNODES), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR/worker_*.log"
exec msrun --worker_num=$((DEVICE_NUM * NNODES)) --local_worker_num="$DEVICE_NUM" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" \
  --log_dir="$LOG_DIR" --join=True --cluster_time_out="$CLUSTER_TIMEOUT" \
  "$ENTRY" --config "$CONFIG" "$@"
