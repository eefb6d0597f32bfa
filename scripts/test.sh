#!/usr/bin/env bash
# The project's test command: creates/updates the virtual environment, lints (ruff), then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$ROOT/scripts/ensure_venv.sh")"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m ruff check --quiet "$ROOT"
exec "$PY" -m pytest "$@"
