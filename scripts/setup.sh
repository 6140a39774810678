#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent; CPU torch from the pinned wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "galaxyvit installed in $(pwd)/.venv"
