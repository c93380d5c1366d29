#!/usr/bin/env bash
# Installs autoconf (editable) with its dependencies. torch is installed only when none is there:
#   - a torch you already have (a CPU or a CUDA build) is kept as it is;
#   - on a machine where nvidia-smi finds a GPU: torch 2.13.0's default build from PyPI (CUDA, several GB);
#   - otherwise: the CPU build of torch 2.13.0 (about 200 MB) from PyTorch's CPU index,
#     https://download.pytorch.org/whl/cpu (a matching wheel in pip's find-links, such as a local one, is used first).
# AUTOCONF_TORCH=cpu or AUTOCONF_TORCH=cuda chooses the build instead. Every choice is printed before it is made.
# Usage: scripts/install.sh [--test]   (--test adds the test extra: pytest, hypothesis, the exports' upstream packages,
#   and the hf extra: transformers, against which the Hugging Face import and the executor's attention are checked)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
if version=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null); then
    echo "install.sh: keeping the installed torch $version"
else
    build=${AUTOCONF_TORCH:-}
    if [ -z "$build" ]; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then build=cuda; else build=cpu; fi
    fi
    case "$build" in
        cpu)
            echo "install.sh: no torch found; installing torch $TORCH_VERSION, CPU build (no GPU found; AUTOCONF_TORCH=cuda for the CUDA build)"
            "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu ;;
        cuda)
            echo "install.sh: no torch found; installing torch $TORCH_VERSION, default CUDA build from PyPI (several GB)"
            "$PY" -m pip install -q "torch==$TORCH_VERSION" ;;
        *)
            echo "install.sh: AUTOCONF_TORCH must be cpu or cuda (got '$build')" >&2
            exit 2 ;;
    esac
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test,hf]"
"$PY" -m pip install -q -e ".${extra}"
"$PY" -c "import torch; print(f'install.sh: autoconf installed with torch {torch.__version__}', '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU build)')"
