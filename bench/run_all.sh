#!/usr/bin/env bash
# Refresh every benchmark figure and bench/RESULTS.md:  bash bench/run_all.sh [flags of bench/run_all.py]
#   bash bench/run_all.sh                      # training, tw_rouge and inference benchmarks (< 20 min, 2 cores)
#   bash bench/run_all.sh --only train         # one benchmark (RESULTS.md then holds only that one)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
export RUN_ALL_LAUNCHER="bash bench/run_all.sh"  # recorded in RESULTS.md
exec "$PY" -m bench.run_all "$@"
