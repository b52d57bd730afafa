#!/usr/bin/env bash
# Quickstart on the embedded data set: prepare scikit-learn's handwritten digits (no download) if needed, then train
# data-parallel with msrun (DEVICE_NUM workers, default 2) and leave an EMA sample grid in runs/digits/samples/.
#   bash launch/quickstart.sh [key=value ...]
#   CONFIG=configs/digits_cond.yaml bash launch/quickstart.sh    # the class-conditional quickstart (runs/digits_cond)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/digits}
if [ ! -f "$DATA/manifest.json" ]; then
  python tools/prepare_data.py --source digits --upsample nearest --output "$DATA"
elif grep -q '"source": "digits"' "$DATA/manifest.json" && ! grep -q '"upsample": "nearest"' "$DATA/manifest.json"; then
  echo "re-preparing $DATA with nearest-neighbour upsampling (the quickstart recipe; it was prepared bicubic)"
  python tools/prepare_data.py --source digits --upsample nearest --output "$DATA" --overwrite
fi
CONFIG=${CONFIG:-configs/digits.yaml}
export DEVICE_NUM=${DEVICE_NUM:-2}
export LOG_DIR=${LOG_DIR:-runs/$(basename "$CONFIG" .yaml)/logs}
exec bash launch/run_8p.sh "$CONFIG" data.path="$DATA" "$@"
