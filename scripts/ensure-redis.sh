#!/usr/bin/env bash
# Makes sure the redis-server and redis-cli binaries exist: tests and the bench start their own servers from
# them, on free ports, and stop them (the cluster tests join theirs with `redis-cli --cluster create`). With
# --serve (`make redis`, opt-in) it also starts a Redis daemon on 127.0.0.1:6379 when none answers there, for
# running the service against a real Redis by hand.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "redis-server or redis-cli missing: installing the Debian packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Debian's package would start its own service on 6379 where an init system runs: forbid that for this
  # install (policy-rc.d exit 101 is "action forbidden"), unless the machine already has a policy.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
fi
[ "${1:-}" = "--serve" ] || exit 0
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
