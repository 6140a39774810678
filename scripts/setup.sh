#!/usr/bin/env bash
# Create .venv and install the project with its dev tools. Idempotent; CPU torch from the pinned wheel.
# The browser tests (tests/test_webui.py) drive Debian's chromium: installed here when it is missing and
# this runs as root with apt-get (Playwright's own browser download is not used); elsewhere they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's chromium for the browser tests"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "WARNING: apt-get could not install chromium: the browser tests will skip" >&2
        fi
    else
        echo "chromium is missing and cannot be installed here (needs root and apt-get): the browser tests will skip"
    fi
fi
echo "galaxyvit installed in $(pwd)/.venv"
