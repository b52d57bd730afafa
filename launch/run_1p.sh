#!/usr/bin/env bash
# Single-device training (Ascend, GPU or CPU; run.device=auto picks the first available).
#   bash launch/run_1p.sh CONFIG [key=value ...]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [key=value ...]" >&2
  exit 2
fi
exec python -m ddpm_dist.train --config "$@"
