#!/usr/bin/env bash
# Makes sure the redis-server binary exists (tests start their own servers from it) and that a
# Redis answers on 127.0.0.1:6379 for `make run` with BILLING_REDIS_URL and for manual checks.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing: installing the Debian package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
