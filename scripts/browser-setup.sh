#!/usr/bin/env bash
# Installs what the browser-peer test needs besides Debian's Chromium: from
# npm, playwright-core (to drive it) and autobahn-browser (the page's WAMP
# client), into target/browser. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  echo "chromium is missing: install Debian's chromium package" >&2
  exit 1
fi
mkdir -p target/browser
if [ ! -d target/browser/node_modules/playwright-core ] || [ ! -d target/browser/node_modules/autobahn-browser ]; then
  npm install --silent --no-audit --no-fund --prefix target/browser playwright-core autobahn-browser
fi
chromium --version
