#!/usr/bin/env bash
# Set up everything the tests need in ./.venv, then run them. CI runs this (via .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests use: headless Chromium opens the HTML timeline; openssl makes
# the certificate of the Elasticsearch TLS test; useradd (passwd) makes the unprivileged
# user the Elasticsearch node runs as when the tests run as root (tests/es_server.py).
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v useradd >/dev/null 2>&1 || missing="$missing passwd"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
.venv/bin/python -m ruff check src tests benchmarks
.venv/bin/python -m mypy src
.venv/bin/python -m pytest "$@"
