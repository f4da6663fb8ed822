-- Closed-loop maximum-rate load (wrk -s load.lua): unique Idempotency-Key per POST, varying users.
package.path = (debug.getinfo(1, "S").source:match("^@?(.*/)") or "./") .. "?.lua;" .. package.path
require("requests")

local threads_started = 0
function setup(thread)
  threads_started = threads_started + 1
  thread:set("tid", threads_started)
end

function init(args)
  set_thread_id(tid or 0)
end

function request()
  return next_request()
end
