#!/usr/bin/env bash
# Installs autoconf (editable) with its dependencies. When torch is missing it installs the CPU build of
# torch 2.13.0 (a loose requirement would pull a multi-GB CUDA build); a torch you already have is kept.
# Usage: scripts/install.sh [--test]   (--test adds the test extra: pytest, hypothesis, the exports' upstream packages)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
"$PY" -m pip install -q -e ".${extra}"
