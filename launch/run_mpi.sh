#!/usr/bin/env bash
# The same data-parallel job through OpenMPI's mpirun (GPU/NCCL or Ascend/HCCL clusters).
#   bash launch/run_mpi.sh CONFIG [key=value ...]
# Environment: DEVICE_NUM [8] processes per node; HOSTFILE (optional) an OpenMPI hostfile for several nodes;
#   MPIRUN_ARGS extra mpirun flags (e.g. --allow-run-as-root); DRY_RUN=1 prints the command instead of running it.
#   MAX_RESTARTS [0]: after a fault (any status but 0, 2, or 130/143 for a stop by Ctrl-C/SIGTERM) run mpirun again
#   with the same arguments, up to N times; the run resumes from its newest checkpoint (train.resume=auto). The
#   decision is ddpm_dist/restarts.py's, as for run_8p.sh: the ranks of this node record how they ended and the step
#   they reached (DDPM_STATUS_DIR), the same failure at the same step twice in a row is a crash loop that ends the
#   job with one line, and every restart is a line in RUN/restarts.jsonl.
# MindSpore's CPU collective library does not start under mpirun, so on CPU use run_8p.sh (msrun).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [DEVICE_NUM=8 HOSTFILE=...] $0 CONFIG [key=value ...]" >&2
  exit 2
fi
CONFIG=$1; shift
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
DEVICE_NUM=${DEVICE_NUM:-8}
NNODES=${NNODES:-1}
ENTRY=$(python -c 'import ddpm_dist.train.__main__ as m; print(m.__file__)')
CMD=(mpirun -n $((DEVICE_NUM * NNODES)) --map-by "ppr:${DEVICE_NUM}:node" --bind-to none -x PYTHONPATH -x GLOG_v)
# Remote ranks get only what -x names: forward the libraries' search paths and the device stacks' own variables
# (CANN's set_env.sh: ASCEND_*, LD_LIBRARY_PATH; HCCL_*, NCCL_*; MS_ASCEND_CHECK_OVERFLOW_MODE and the other MS_*).
for VAR in LD_LIBRARY_PATH PATH $(compgen -e | grep -E '^(ASCEND_|HCCL_|NCCL_|CUDA_|MS_)' || true); do
  if [ -n "${!VAR+x}" ]; then CMD+=(-x "$VAR"); fi
done
if [ -n "${HOSTFILE:-}" ]; then CMD+=(--hostfile "$HOSTFILE"); fi
# shellcheck disable=SC2206
CMD+=(${MPIRUN_ARGS:-} python "$ENTRY" --config "$CONFIG" "$@")
MAX_RESTARTS=${MAX_RESTARTS:-0}
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || { echo "error: MAX_RESTARTS must be a whole number >= 0 (got '$MAX_RESTARTS')" >&2; exit 2; }
if [ "${DRY_RUN:-0}" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  [ "$MAX_RESTARTS" = 0 ] || echo "# run again after a fault, up to $MAX_RESTARTS time(s)"
  exit 0
fi
python -m ddpm_dist.train --config "$CONFIG" --dry-run "$@" > /dev/null
[ "$MAX_RESTARTS" = 0 ] && exec "${CMD[@]}"
# run.out_dir as the workers resolve it: the newest checkpoint's step and restarts.jsonl are there
RUN_DIR=$(python -c 'import sys; from ddpm_dist.config import load_config
print(load_config(sys.argv[1], sys.argv[2:]).run.out_dir)' "$CONFIG" "$@")
STATE=$(mktemp -d "${TMPDIR:-/tmp}/ddpm_mpirun.XXXXXX")
trap 'rm -rf "$STATE"' EXIT
# the ranks' records (ddpm_dist/job_status.py), a fresh directory per attempt; mpirun passes the variable on
CMD=("${CMD[0]}" -x DDPM_STATUS_DIR "${CMD[@]:1}")
# mpirun runs in the background so that a SIGTERM or Ctrl-C to this script reaches it (as SIGTERM: the workers save
# and exit 0) and is never followed by a restart
STOPPED=0
for ((k = 0; ; k++)); do
  export DDPM_STATUS_DIR="$STATE/attempt_$k"
  mkdir -p "$DDPM_STATUS_DIR"
  "${CMD[@]}" & child=$!
  trap 'STOPPED=1; kill -TERM "$child" 2>/dev/null' TERM INT
  while :; do
    rc=0; wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break  # wait was interrupted by the trap: mpirun is still stopping
  done
  case "$rc" in 0|2|130|143) exit "$rc" ;; esac
  [ "$STOPPED" = 1 ] && exit "$rc"
  python -m ddpm_dist.restarts --state "$STATE/policy.json" --max-restarts "$MAX_RESTARTS" --code "$rc" \
    --status-dir "$DDPM_STATUS_DIR" --run-dir "$RUN_DIR" || exit "$rc"
done
