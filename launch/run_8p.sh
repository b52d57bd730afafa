#!/usr/bin/env bash
# Data-parallel training with msrun: one worker per device, the same command on every node.
#   bash launch/run_8p.sh CONFIG [key=value ...]
# Environment (defaults in brackets):
#   DEVICE_NUM   workers on this node [8]          NNODES     number of nodes [1]
#   NODE_RANK    this node's index [0]             MASTER_ADDR  node 0's address [127.0.0.1]
#   MASTER_PORT  scheduler port on node 0 [8118]   LOG_DIR    per-worker logs [runs/msrun_logs]
#   CLUSTER_TIMEOUT  seconds to wait for all workers to join [600]
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
if [ -n "${ENTRY:-}" ]; then
  [ -f "$ENTRY" ] || { echo "error: ENTRY script not found: $ENTRY" >&2; exit 2; }
  ARGS=("$@")
else
  CONFIG=$1; shift
  [ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
  ENTRY=$(python -c 'import ddpm_dist.train.__main__ as m; print(m.__file__)')
  # Bad configs fail here, once, before any worker starts.
  python -m ddpm_dist.train --config "$CONFIG" --dry-run "$@" > /dev/null
  ARGS=(--config "$CONFIG" "$@")
fi
if [ "$NNODES" -gt 1 ]; then
  # Multi-node: check MASTER_ADDR first, or a mistake only shows after CLUSTER_TIMEOUT as msrun's generic "processes
  # not successfully spawned". msrun starts the scheduler on the node that owns MASTER_ADDR, so that must be node 0;
  # the other nodes wait (at most CLUSTER_TIMEOUT seconds) until node 0's scheduler accepts connections.
  python - "$MASTER_ADDR" "$MASTER_PORT" "$NODE_RANK" "$CLUSTER_TIMEOUT" <<'PY' || exit $?
import socket, sys, time
addr, port, node, timeout = sys.argv[1].strip("[]"), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def fail(msg, code=2):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)
try:
    family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:  # sends nothing: looks up the route (msrun's own test)
        s.connect(sockaddr)
        local = s.getsockname()[0] == sockaddr[0]
except OSError as err:
    fail(f"MASTER_ADDR={addr}: {err.strerror or err}")
if node == 0 and not local:
    fail(f"NODE_RANK=0 runs the scheduler, but MASTER_ADDR={addr} is not an address of this node")
if node != 0 and local:
    fail(f"MASTER_ADDR={addr} is this node's own address, but NODE_RANK={node}: give node 0's address")
deadline, said = time.monotonic() + timeout, False
while node != 0:
    try:
        socket.create_connection(sockaddr[:2], timeout=max(0.5, min(5.0, deadline - time.monotonic()))).close()
        break
    except OSError as err:
        if time.monotonic() >= deadline:
            fail(f"no scheduler answered at MASTER_ADDR={addr} MASTER_PORT={port} within CLUSTER_TIMEOUT={timeout:.0f}s "
                 f"({err.strerror or err}): is it node 0's address, MASTER_PORT the same on every node and open on "
                 "node 0, and node 0 started?", 3)
        if not said:
            print(f"waiting up to {timeout:.0f}s for node 0's scheduler at {addr}:{port}", flush=True)
            said = True
        time.sleep(1)
PY
fi
mkdir -p "$LOG_DIR"
echo "msrun: $((DEVICE_NUM * NNODES)) workers ($DEVICE_NUM on node $NODE_RANK of $NNODES), master $MASTER_ADDR:$MASTER_PORT, logs in $LOG_DIR/worker_*.log"
# msrun is not exec'd: on SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) msrun would die or SIGKILL its
# workers, so this script forwards the signal to the workers themselves (msrun's children); they finish the current
# step, agree on a stop step, save a checkpoint and exit 0, and msrun then exits 0 too.
msrun --worker_num=$((DEVICE_NUM * NNODES)) --local_worker_num="$DEVICE_NUM" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --node_rank="$NODE_RANK" \
  --log_dir="$LOG_DIR" --join=True --cluster_time_out="$CLUSTER_TIMEOUT" \
  "$ENTRY" "${ARGS[@]}" &
MSRUN_PID=$!
forward() {  # SIGTERM to msrun's worker children only (not to its scheduler process, MS_ROLE=MS_SCHED)
  echo "run_8p.sh: $1 received; asking the workers to save a checkpoint and stop" >&2
  for pid in $(pgrep -P "$MSRUN_PID" || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx MS_ROLE=MS_WORKER; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
}
trap 'forward TERM' TERM
trap 'forward TERM' INT
while true; do
  rc=0
  wait "$MSRUN_PID" || rc=$?
  if ! kill -0 "$MSRUN_PID" 2>/dev/null; then  # msrun is gone (otherwise a trapped signal interrupted wait)
    # msrun may stop tailing before the workers' last words: repeat rank 0's outcome line on this node
    grep -h -E "^(done:|stopped by|error:)" "$LOG_DIR"/worker_0.log 2>/dev/null | tail -1 || true
    exit "$rc"
  fi
done
