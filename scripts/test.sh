#!/usr/bin/env bash
# Quick start, tests: create or reuse .venv, install argen with its test extras, run the suite.
# Extra arguments go to pytest (e.g. -m slow, -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
