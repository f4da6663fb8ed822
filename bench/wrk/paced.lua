-- Open-loop paced load for latency at a fixed rate (wrk has no --rate; this is the wrk2 idea in Lua).
-- Run with as many threads as connections (-t N -c N): one connection per thread, so a response
-- belongs to the request sent before it. Each connection sends on its own schedule every
-- BENCH_INTERVAL_MS; a late response does not push the schedule back, and latency is counted from
-- the scheduled send time (no coordinated omission). Prints "PACED count errors p50 p90 p99 p999 max".
package.path = (debug.getinfo(1, "S").source:match("^@?(.*/)") or "./") .. "?.lua;" .. package.path
require("requests")
local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval = tonumber(os.getenv("BENCH_INTERVAL_MS") or "10")
local threads = {}
local next_at, intended, sent = nil, nil, nil
lat = {}
errors = 0

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tid", #threads)
end

function init(args)
  set_thread_id(tid or 0)
end

function delay()
  local t = now_ms()
  if not next_at then
    next_at = t + math.random() * interval -- spread the connections' phases
  end
  intended = next_at
  next_at = next_at + interval
  local wait = intended - t
  if wait <= 0 then
    return 0
  end
  return math.floor(wait)
end

function request()
  sent = now_ms()
  return next_request()
end

function response(status, headers, body)
  local start = intended
  if sent < start then
    start = sent -- sent early by the ms rounding of delay(): count from the real send
  end
  lat[#lat + 1] = now_ms() - start
  if status >= 300 then
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local all, errs = {}, 0
  for _, thread in ipairs(threads) do
    for _, v in ipairs(thread:get("lat")) do
      all[#all + 1] = v
    end
    errs = errs + thread:get("errors")
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then
      return 0
    end
    return all[math.max(1, math.ceil(#all * p))]
  end
  io.write(string.format("PACED %d %d %.3f %.3f %.3f %.3f %.3f\n", #all, errs, pct(0.5), pct(0.9), pct(0.99),
    pct(0.999), all[#all] or 0))
end
