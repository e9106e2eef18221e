#!/usr/bin/env bash
# Quick start, main job: create .venv, install argen, run the embedded default end to end
# (train the tiny VQ tokenizer on the shapes world, reconstruct, evaluate) into outputs/quickstart.
# Extra arguments go to argen-quickstart (e.g. --steps 500).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/argen-quickstart "$@"
