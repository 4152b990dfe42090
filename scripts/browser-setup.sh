#!/usr/bin/env bash
# Installs what the browser-peer test needs: Debian's Chromium, and from
# npm playwright-core (to drive it) and autobahn-browser (the page's WAMP
# client), into target/browser. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "chromium is missing: install Debian's chromium package" >&2
    exit 1
  fi
fi
mkdir -p target/browser
if [ ! -d target/browser/node_modules/playwright-core ] || [ ! -d target/browser/node_modules/autobahn-browser ]; then
  npm install --silent --no-audit --no-fund --prefix target/browser playwright-core autobahn-browser
fi
chromium --version
