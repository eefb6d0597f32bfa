#!/usr/bin/env bash
# Train (or RL-tune) a title generator:  bash train.sh [PRESET.json] [--flag value ...]
#   bash train.sh configs/tiny-cpu.json            # offline demo: the sample data in data/sample/, CPU, from scratch
#   bash train.sh                                  # homework defaults: google/mt5-small on data/train.jsonl
#   bash train.sh configs/mt5-small.json           # the homework recipe for one GPU
# Flags after the preset override it (python train_decoder.py --help lists them all).
# One process (no `accelerate config`, or a single-process one): the script runs directly, so SIGTERM and
# Ctrl-C reach it. With a multi-process `accelerate config` (several GPUs, DeepSpeed, FSDP) the arguments
# and data files are checked once, then `accelerate launch` starts the processes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

accelerate_config="${ACCELERATE_CONFIG_FILE:-${HF_HOME:-$HOME/.cache/huggingface}/accelerate/default_config.yaml}"
if [ ! -f "$accelerate_config" ] || ! "$PY" "$ROOT/scripts/needs_launcher.py" "$accelerate_config"; then
  exec "$PY" "$ROOT/train_decoder.py" "$@"
fi
# several processes: a bad flag or data file is reported once, without the launcher's traceback
"$PY" -c 'import sys, train_decoder; sys.exit(train_decoder.check_only(sys.argv[1:]))' "$@" || exit $?
exec "$PY" -m accelerate.commands.launch --config_file "$accelerate_config" "$ROOT/train_decoder.py" "$@"
