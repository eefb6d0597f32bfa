#!/usr/bin/env bash
# Course contract: write one {"title", "id"} JSON line per input article.
#   bash run.sh INPUT.jsonl OUTPUT.jsonl [MODEL_DIR]
# MODEL_DIR (third argument, else $MODEL_DIR, else the model download.sh fetched, models/title-model (the
#           unpack_to of model.lock), when it is there, else the default training run's export
#           outputs/mt5-small/best)
# PRESET    decoding preset from configs/generation_presets.json (default: the export's own strategy, the
#           one training or `predict.py --sweep ... --select` chose; see title_config.json)
# Relative paths are taken from the caller's current directory. Other options: python predict.py --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
  echo "usage: bash run.sh INPUT.jsonl OUTPUT.jsonl [MODEL_DIR]   (env: MODEL_DIR, PRESET)" >&2
  exit 2
fi

default_model_dir() {
  local unpack_to=""
  if [ -f "$ROOT/model.lock" ]; then
    unpack_to="$(sed -n 's/^unpack_to=//p' "$ROOT/model.lock" | tail -n 1 | tr -d '\r')"
  fi
  unpack_to="${unpack_to:-models/title-model}"
  if [ -f "$ROOT/$unpack_to/config.json" ]; then
    echo "$ROOT/$unpack_to"
  else
    echo "$ROOT/outputs/mt5-small/best"
  fi
}

MODEL_DIR="${3:-${MODEL_DIR:-$(default_model_dir)}}"
# --flag=value, so that a path starting with "-" is not taken for an option
args=("--model_dir=$MODEL_DIR" "--input_file=$1" "--output_file=$2")
if [ -n "${PRESET:-}" ]; then
  args+=("--preset=$PRESET")
fi

PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$ROOT/predict.py" "${args[@]}"
