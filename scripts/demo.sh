#!/usr/bin/env bash
# The offline demo, start to finish, on the sample data in data/sample/ (no network, no GPU, no flags):
#   1. denoising pretraining of a tiny mT5-architecture model from scratch (configs/pretrain-tiny-cpu.json),
#   2. fine-tuning it to write titles, with the decoding strategy selected on the validation set
#      (configs/tiny-cpu.json),
#   3. titles for the validation file through run.sh (the export's own strategy) and their ROUGE (jieba).
# About 9 minutes on 2 idle CPU cores (9 min 22 s measured; one thread per stage on a shared machine: about 23).
# Extra arguments go to both training stages (e.g. --overwrite_output_dir).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash train.sh configs/pretrain-tiny-cpu.json "$@"
bash train.sh configs/tiny-cpu.json "$@"
MODEL_DIR=outputs/tiny-cpu/best bash run.sh data/sample/lcsts_val.jsonl outputs/tiny-cpu/val_titles.jsonl
PY="$(bash scripts/ensure_venv.sh)"
PYTHONPATH="$ROOT" "$PY" -m tw_rouge -r data/sample/lcsts_val.jsonl -s outputs/tiny-cpu/val_titles.jsonl --segmenter jieba
