#!/usr/bin/env bash
# Makes sure wrk (the HTTP load generator `make bench` drives) is installed, from Debian's package.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
echo "wrk missing: installing the Debian package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq wrk >/dev/null
wrk --version 2>&1 | head -1 >&2 || true
