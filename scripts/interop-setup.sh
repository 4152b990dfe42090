#!/usr/bin/env bash
# Installs the independent implementations the interop tests run against,
# from PyPI, into target/interop-venv: the WAMP client and router autobahn
# and crossbar (tests/wamp_interop.rs), noiseprotocol and coincurve for
# the independent Noise peer (tests/secure_transport.rs), and aioquic,
# cryptography and coincurve for the independent QUIC peer
# (tests/interop/quic_peer.py, tests/quic_transport.rs). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/interop-venv
if [ ! -x "$venv/bin/crossbar" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet autobahn crossbar
fi
if ! "$venv/bin/python" -c 'import noise, coincurve' 2>/dev/null; then
  "$venv/bin/pip" install --quiet noiseprotocol coincurve
fi
if ! "$venv/bin/python" -c 'import aioquic, cryptography, coincurve' 2>/dev/null; then
  "$venv/bin/pip" install --quiet aioquic cryptography coincurve
fi
"$venv/bin/python" -c 'import noise, coincurve; print("noiseprotocol, coincurve", coincurve.__version__)'
"$venv/bin/python" -c 'import autobahn; print("autobahn", autobahn.__version__)'
"$venv/bin/python" -c 'import aioquic, cryptography; print("aioquic", aioquic.__version__, "cryptography", cryptography.__version__)'
"$venv/bin/crossbar" version 2>/dev/null | grep -m1 -i "crossbar" || true
