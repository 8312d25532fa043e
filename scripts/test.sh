#!/usr/bin/env bash
# Set up everything the tests need in ./.venv, then run them. CI runs this (via .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium opens the HTML timeline in tests (Debian package 'chromium').
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m mypy src
.venv/bin/python -m pytest "$@"
