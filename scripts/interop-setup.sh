#!/usr/bin/env bash
# Installs the independent WAMP implementations the interop tests run
# against (autobahn, crossbar, from PyPI) into target/interop-venv, where
# tests/wamp_interop.rs finds them. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/interop-venv
if [ ! -x "$venv/bin/crossbar" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet autobahn crossbar
fi
"$venv/bin/python" -c 'import autobahn; print("autobahn", autobahn.__version__)'
"$venv/bin/crossbar" version 2>/dev/null | grep -m1 -i "crossbar" || true
