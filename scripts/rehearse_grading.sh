#!/usr/bin/env bash
# Rehearse grading before handing in: copy the repository (tracked and untracked-not-ignored files; no .venv,
# outputs or models) into a fresh temporary directory, run `bash ./download.sh` and
# `bash ./run.sh INPUT OUTPUT` there with the Hugging Face hub off, check the output, print each step's time
# and peak memory.
#   bash scripts/rehearse_grading.sh INPUT.jsonl [MODEL_URL] [--run_sh FILE] [--work_dir DIR] [--keep]
# The venv is the caller's ($VENV, else this repository's .venv): it is reused, nothing is reinstalled.
# --help lists the options.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
exec "$PY" "$ROOT/scripts/rehearse_grading.py" "$@"
