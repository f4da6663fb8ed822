#!/usr/bin/env bash
# Usage: bash bench/redis_fsync.sh  (needs redis-server and redis-benchmark; loopback only, fixed counts)
# Measures appendfsync always vs everysec with redis-benchmark on loopback (bounded: fixed request counts).
set -u
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
for mode in always everysec; do
  dir=$(mktemp -d ${TMPDIR:-/tmp}/redis-fsync-$mode-XXXX)
  port=$(free_port)
  redis-server --port $port --bind 127.0.0.1 --dir $dir --save "" --appendonly yes --appendfsync $mode --daemonize yes --pidfile $dir/pid --logfile $dir/log
  sleep 0.5
  echo "== $mode (port $port, dir on $(df --output=source,fstype $dir | tail -1))"
  redis-benchmark -p $port -t set,incr -n 200000 -q
  redis-benchmark -p $port -n 200000 -r 100000 -q EVAL "redis.call('HINCRBY', KEYS[1], 'available', ARGV[1]); redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'txns', ARGV[1]); return 1" 2 'acct:__rand_int__' outbox 100
  echo "-- single client (-c 1), latency-bound"
  redis-benchmark -p $port -t set -n 20000 -c 1 -q
  redis-cli -p $port shutdown nosave >/dev/null 2>&1
  rm -rf $dir
done
