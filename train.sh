#!/usr/bin/env bash
# Train (or RL-tune) a title generator:  bash train.sh [PRESET.json] [--flag value ...]
#   bash train.sh                                   # homework defaults: google/mt5-small, data/train.jsonl
#   bash train.sh configs/tiny-cpu.json --train_file F --validation_file G    # offline, CPU, from scratch
# Flags after the preset override it (python train_decoder.py --help lists them all). With an
# `accelerate config` on this machine (multi-GPU, DeepSpeed, FSDP) that config is used; otherwise one process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

launch_defaults=()
accelerate_config="${ACCELERATE_CONFIG_FILE:-${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml}"
if [ ! -f "$accelerate_config" ]; then
  launch_defaults=(--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)
else
  launch_defaults=(--config_file "$accelerate_config")
fi
exec "$PY" -m accelerate.commands.launch "${launch_defaults[@]}" "$ROOT/train_decoder.py" "$@"
