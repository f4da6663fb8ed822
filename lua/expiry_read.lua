--[[
  expiry_read: what the sweeper and the reservation reads need of a partition's time (the body of a
  read-only function); reads only: the partition's clock is not written.
    ARGV[1] 'due'  KEYS[1] the partition's expiry index;  KEYS[2] its meta hash;  ARGV[2] limit (1 .. 10000):
                   returns {now, member, member, ...}: up to `limit` members whose deadline is at or before now,
                   earliest first
    ARGV[1] 'now'  KEYS[1] the partition's meta hash: returns {now}
    ARGV[1] 'reservation'  KEYS[1] a reservation hash;  KEYS[2] its partition's meta hash: returns {now, field,
                   value, field, value, ...} (no fields: no such reservation)
  now is the partition's clock as a function running now would read it (lua/_prelude.lua clock(): Redis's TIME,
  never below the partition's last timestamp), in ms, as a decimal string.
  Errors (see the prelude): a meta hash whose clock is not an integer, an index that is not a sorted set.
]]
local function partition_now(meta)
  local stored = checked_int(rcall('HGET', meta, 'clock'), MAX_TIME, meta .. ' clock') or 0
  local t = rcall('TIME')
  return math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), stored)
end
local what = ARGV[1]
if what == 'due' then
  local limit = checked_int(ARGV[2], 10000, 'limit')
  if not limit or limit < 1 then
    fail('limit must be 1 .. 10000: ' .. tostring(ARGV[2]))
  end
  check_type(KEYS[1], 'zset')
  local at = int(partition_now(KEYS[2]))
  local out = {at}
  for _, member in ipairs(rcall('ZRANGEBYSCORE', KEYS[1], '-inf', at, 'LIMIT', 0, limit)) do
    out[#out + 1] = member
  end
  return out
end
if what == 'now' then
  return {int(partition_now(KEYS[1]))}
end
if what == 'reservation' then
  local out = {int(partition_now(KEYS[2]))}
  for _, item in ipairs(rcall('HGETALL', KEYS[1])) do
    out[#out + 1] = item
  end
  return out
end
fail('expiry_read: unknown request ' .. tostring(what))
