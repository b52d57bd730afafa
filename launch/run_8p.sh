#!/usr/bin/env bash
# Data-parallel training with msrun: one worker per device, the same command on every node.
#   bash launch/run_8p.sh CONFIG [key=value ...]
# Environment (defaults in brackets):
#   DEVICE_NUM   workers on this node [8]          NNODES     number of nodes [1]
#   NODE_RANK    this node's index [0]             MASTER_ADDR  node 0's address [127.0.0.1]
#   MASTER_PORT  scheduler port on node 0 [8118]   LOG_DIR    per-worker logs [runs/msrun_logs]
#   CLUSTER_TIMEOUT  seconds to wait for all workers to join [600]
#   BIND_CORE    True: msrun pins each worker to its own share of this node's CPU cores; False: no pinning [True]
#   MAX_RESTARTS after a fault (a worker killed or crashed, a hang, a lost node) relaunch msrun with the same
#                arguments up to N times; the run resumes from its newest checkpoint (ddpm_dist/restarts.py) [0]
#   ENTRY        another Python script to run data-parallel instead of training, e.g.
#                ENTRY=tools/sample.py bash launch/run_8p.sh --ckpt CKPT --out DIR  (all arguments go to it)
# The exit status is the job's, on every node (ddpm_dist/job_status.py): 0 done, or stopped on request (SIGTERM,
# Ctrl-C) after the workers saved; 2 the input is wrong (config, data, checkpoint, flags: never worth a retry), shown
# as the worker's one "error:" line within seconds; anything else a fault (128+N: a worker killed by signal N; 1 an
# uncaught exception or msrun's own failure). LOG_DIR/job_status.json holds the outcome, machine-readable.
set -euo pipefail
# A stop request while the checks below run (a few seconds): nothing has started, nothing to save - exit 0, the
# contract's "stopped on request". From the exec at the end on, ddpm_dist/supervisor.py catches it.
trap 'echo "stopped by SIGINT (Ctrl-C) before msrun started: nothing to save"; exit 0' INT
trap 'echo "stopped by SIGTERM before msrun started: nothing to save"; exit 0' TERM
trap 'echo "stopped by SIGHUP before msrun started: nothing to save"; exit 0' HUP
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
MAX_RESTARTS=${MAX_RESTARTS:-0}
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || { echo "error: MAX_RESTARTS must be a whole number >= 0 (got '$MAX_RESTARTS')" >&2; exit 2; }
CHECK=(python -m ddpm_dist.launch_check --device-num "$DEVICE_NUM" --nnodes "$NNODES" --node-rank "$NODE_RANK"
       --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" --cluster-timeout "$CLUSTER_TIMEOUT"
       --bind-core "$BIND_CORE")
# run.out_dir of CONFIG [key=value ...], resolved as the workers will: the supervisor reads the run's checkpoint steps
# and writes its restart record there (restarts.jsonl); empty if the config does not load (the check below says why)
run_dir() { python -c 'import sys; from ddpm_dist.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).run.out_dir)' "$@" 2>/dev/null || true; }
RUN_DIR=()
if [ -n "${ENTRY:-}" ]; then
  [ -f "$ENTRY" ] || { echo "error: ENTRY script not found: $ENTRY" >&2; exit 2; }
  ARGS=("$@")
  if [ "${1:-}" = --config ] && [ $# -ge 2 ]; then OUT_DIR=$(run_dir "${@:2}"); fi
else
  CONFIG=$1; shift
  [ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
  ENTRY=$(python -c 'import ddpm_dist.train.__main__ as m; print(m.__file__)')
  CHECK+=(--config "$CONFIG" "$@")
  ARGS=(--config "$CONFIG" "$@")
  OUT_DIR=$(run_dir "$CONFIG" "$@")
fi
if [ -n "${OUT_DIR:-}" ]; then RUN_DIR=(--run-dir "$OUT_DIR"); fi
# One line per mistake before any worker starts (ddpm_dist/launch_check.py): the variables above in range, the config
# and its global batch over DEVICE_NUM x NNODES workers; with several nodes MASTER_ADDR (node 0's own, non-loopback
# address), and on the other nodes a wait of at most CLUSTER_TIMEOUT seconds for node 0's scheduler.
"${CHECK[@]}" || exit $?
mkdir -p "$LOG_DIR"
echo "msrun: $((DEVICE_NUM * NNODES)) workers ($DEVICE_NUM on node $NODE_RANK of $NNODES), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR/worker_*.log"
# msrun runs under ddpm_dist/supervisor.py (which replaces this shell, so a signal to the launcher's pid reaches it), in
# a session of its own: Ctrl-C reaches the supervisor only, which forwards the stop to the workers (they save at one
# agreed step and exit 0; msrun would SIGKILL them). It ends the job as soon as a worker fails, with that worker's
# line and status, kills what msrun leaves behind, and keeps msrun's own console lines in $LOG_DIR/msrun.log. It shows
# the workers' logs itself: --tail_worker_log=-2 (no such worker) keeps msrun from starting a `tail -f` per worker.
exec python -m ddpm_dist.supervisor --log-dir "$LOG_DIR" --local-workers "$DEVICE_NUM" --node-rank "$NODE_RANK" \
  --max-restarts "$MAX_RESTARTS" "${RUN_DIR[@]}" -- \
  msrun --worker_num=$((DEVICE_NUM * NNODES)) --local_worker_num="$DEVICE_NUM" --tail_worker_log=-2 \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" \
  --log_dir="$LOG_DIR" --bind_core="$BIND_CORE" --join=True --cluster_time_out="$CLUSTER_TIMEOUT" \
  "$ENTRY" "${ARGS[@]}"
