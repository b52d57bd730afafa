#!/usr/bin/env bash
# Data-parallel training with msrun: one worker per device, the same command on every node.
#   bash launch/run_8p.sh CONFIG [key=value ...]
# Environment (defaults in brackets):
#   DEVICE_NUM   workers on this node [8]          NNODES     number of nodes [1]
#   NODE_RANK    this node's index [0]             MASTER_ADDR  node 0's address [127.0.0.1]
#   MASTER_PORT  scheduler port on node 0 [8118]   LOG_DIR    per-worker logs [runs/msrun_logs]
#   CLUSTER_TIMEOUT  seconds to wait for all workers to join [600]
#   BIND_CORE    True: msrun pins each worker to its own share of this node's CPU cores; False: no pinning [True]
#   ENTRY        another Python script to run data-parallel instead of training, e.g.
#                ENTRY=tools/sample.py bash launch/run_8p.sh --ckpt CKPT --out DIR  (all arguments go to it)
# The exit status is the job's: non-zero as soon as any worker fails (msrun --join=True).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [DEVICE_NUM=8 NNODES=1 NODE_RANK=0 MASTER_ADDR=... MASTER_PORT=...] $0 CONFIG [key=value ...]" >&2
  echo "       ENTRY=script.py $0 [script arguments ...]" >&2
  exit 2
fi
DEVICE_NUM=${DEVICE_NUM:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-8118}
LOG_DIR=${LOG_DIR:-runs/msrun_logs}
CLUSTER_TIMEOUT=${CLUSTER_TIMEOUT:-600}
BIND_CORE=${BIND_CORE:-True}
CHECK=(python -m ddpm_dist.launch_check --device-num "$DEVICE_NUM" --nnodes "$NNODES" --node-rank "$NODE_RANK"
       --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --cluster-timeout "$CLUSTER_TIMEOUT"
       --bind-core "$BIND_CORE")
if [ -n "${ENTRY:-}" ]; then
  [ -f "$ENTRY" ] || { echo "error: ENTRY script not found: $ENTRY" >&2; exit 2; }
  ARGS=("$@")
else
  CONFIG=$1; shift
  [ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
  ENTRY=$(python -c 'import ddpm_dist.train.__main__ as m; print(m.__file__)')
  CHECK+=(--config "$CONFIG" "$@")
  ARGS=(--config "$CONFIG" "$@")
fi
# One line per mistake before any worker starts (ddpm_dist/launch_check.py): the variables above in range, the config
# and its global batch over DEVICE_NUM x NNODES workers; with several nodes MASTER_ADDR (node 0's own, non-loopback
# address), and on the other nodes a wait of at most CLUSTER_TIMEOUT seconds for node 0's scheduler.
"${CHECK[@]}" || exit $?
mkdir -p "$LOG_DIR"
echo "msrun: $((DEVICE_NUM * NNODES)) workers ($DEVICE_NUM on node $NODE_RANK of $NNODES), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR/worker_*.log"
# msrun is not exec'd: on SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) msrun would die or SIGKILL its
# workers, so this script forwards the signal to the workers themselves (msrun's children); they finish the current
# step, agree on a stop step, save a checkpoint and exit 0, and msrun then exits 0 too.
# msrun's own console lines ("[WARNING] ME(pid:...) ...", "[INFO] DISTRIBUTED(...) ...", "Start worker process with
# rank id:0, log file:... Execute command: ..." - the line above already names the logs) are kept in
# $LOG_DIR/msrun.log, not shown: the console shows the workers' lines. msrun writes to process substitutions (not a
# pipe), so $! is msrun itself (the signal forwarding below needs its pid) and its exit status is the job's.
MSRUN_NOISE='^(\[(WARNING|INFO)\] (ME|DISTRIBUTED)\(|Start (scheduler|worker) process)'
console() { tee -a "$LOG_DIR/msrun.log" | grep --line-buffered -v -E "$MSRUN_NOISE" || true; }
LOG_START=$(stat -c %s "$LOG_DIR/msrun.log" 2>/dev/null || echo 0)  # where this launch's part of msrun.log begins
msrun --worker_num=$((DEVICE_NUM * NNODES)) --local_worker_num="$DEVICE_NUM" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" \
  --log_dir="$LOG_DIR" --bind_core="$BIND_CORE" --join=True --cluster_time_out="$CLUSTER_TIMEOUT" \
  "$ENTRY" "${ARGS[@]}" > >(console) 2> >(console >&2) &
MSRUN_PID=$!
forward() {  # the signal to msrun's worker children only (not to its scheduler process, MS_ROLE=MS_SCHED)
  echo "run_8p.sh: $1 received; asking the workers to save a checkpoint and stop" >&2
  for pid in $(pgrep -P "$MSRUN_PID" || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx MS_ROLE=MS_WORKER; then
      kill "-$1" "$pid" 2>/dev/null || true
    fi
  done
}
trap 'forward TERM' TERM
trap 'forward INT' INT
while true; do
  rc=0
  wait "$MSRUN_PID" || rc=$?
  if ! kill -0 "$MSRUN_PID" 2>/dev/null; then  # msrun is gone (otherwise a trapped signal interrupted wait)
    # msrun may stop tailing before the workers' last words: show rank 0's outcome line on this node unless this
    # launch's console already did (after a moment for the console's tee to catch up)
    last=$(grep -h -E "^(done:|stopped by|error:)" "$LOG_DIR"/worker_0.log 2>/dev/null | tail -1 || true)
    if [ -n "$last" ]; then
      sleep 0.5
      tail -c "+$((LOG_START + 1))" "$LOG_DIR/msrun.log" 2>/dev/null | grep -qxF -- "$last" || echo "$last"
    fi
    exit "$rc"
  fi
done
