#!/usr/bin/env bash
# Create (once) and fill the project's virtual environment, then print its python path.
#   VENV=/path/to/venv  use another location (default: <repo>/.venv)
# Idempotent: when requirements.txt and constraints.txt have not changed since the last successful install it only checks
# a stamp file and returns in well under a second. All install output goes to stderr.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
REQ="$ROOT/requirements.txt"
CONSTRAINTS="$ROOT/constraints.txt"
STAMP="$VENV/.requirements.sha256"
want="$(cat "$REQ" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

{
  PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  has_gpu=0
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then has_gpu=1; fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment at $VENV"
    if [ "$has_gpu" = 1 ] && "$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
      # Keep the CUDA torch this machine already has instead of downloading another one.
      "$PY" -m venv --system-site-packages "$VENV"
    else
      "$PY" -m venv "$VENV"
    fi
  fi
  VPY="$VENV/bin/python"
  "$VPY" -m pip install --quiet --upgrade pip
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    if [ "$has_gpu" = 1 ]; then
      echo "[setup] GPU found: installing torch==2.13.0 from PyPI (a CUDA build)"
      "$VPY" -m pip install --quiet torch==2.13.0
    else
      echo "[setup] no GPU: installing the CPU build torch==2.13.0"
      "$VPY" -m pip install --quiet torch==2.13.0
    fi
  fi
  echo "[setup] installing requirements.txt (versions pinned by constraints.txt)"
  "$VPY" -m pip install --quiet -r "$REQ" -c "$CONSTRAINTS"
  echo "$want" > "$STAMP"
  echo "[setup] done"
} >&2
echo "$VENV/bin/python"
