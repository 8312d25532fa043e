#!/usr/bin/env bash
# Set up everything the tests need in ./.venv, then run them. CI runs this (via .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
