#!/usr/bin/env bash
# Refresh every benchmark figure and bench/RESULTS.md:  bash bench/run_all.sh [flags of bench/run_all.py]
#   bash bench/run_all.sh                      # training, tw_rouge, inference and vocabulary-pruning benchmarks
#                                              # (about 40-45 min on 2 cores; --only prune alone: 20-25 min)
#   bash bench/run_all.sh --only train         # one benchmark (RESULTS.md then holds only that one)
#   bash bench/run_all.sh --only prune --merge # refresh one section of RESULTS.md, keep the others
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
export RUN_ALL_LAUNCHER="bash bench/run_all.sh"  # recorded in RESULTS.md
exec "$PY" -m bench.run_all "$@"
