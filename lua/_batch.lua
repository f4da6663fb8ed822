--[[
  Batch entry point: many operations in ONE script run, in order, each one the same function as its
  single script (own idempotency check and record, own refusals, own outbox entry).
    KEYS[1] outbox stream   KEYS[2] meta hash   KEYS[3] totals hash
    then for each operation: its idempotency record key, then its keys (OPS[op].nkeys of them)
    ARGV[1] idempotency record TTL in seconds
    then for each operation: its name (a key of OPS), its '<fingerprint> <lang>' ('' = no key; as ARGV[1]
    of a single script), then its arguments
  Returns a flat array: kind1, outcome1, kind2, outcome2, ... (kinds as in the prelude, or 'error' with
  the message when an operation failed inside Redis: the operations before and after it still run).
  Every key is declared in KEYS, but the keys of many users hash to many cluster slots: this script is
  for a single Redis (or must be split per slot under Redis Cluster).
]]
OUTBOX_KEY, META_KEY, TOTALS_KEY, IDEM_TTL = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
-- Check the whole layout before anything runs: a malformed call changes nothing.
local k, a = 4, 2
while a <= #ARGV do
  local spec = OPS[ARGV[a]]
  if not spec then
    return redis.error_reply('batch: unknown operation ' .. tostring(ARGV[a]))
  end
  k, a = k + 1 + spec.nkeys, a + 2 + spec.nargs
end
if k ~= #KEYS + 1 or a ~= #ARGV + 1 then
  return redis.error_reply('batch: keys and arguments do not match the operations')
end
local out = {}
k, a = 4, 2
while a <= #ARGV do
  local spec = OPS[ARGV[a]]
  local ok, kind, payload = pcall(run_op, spec, KEYS[k], ARGV[a + 1], k + 1, a + 2)
  if not ok then
    kind, payload = 'error', type(kind) == 'table' and tostring(kind.err) or tostring(kind)
  end
  out[#out + 1] = kind
  out[#out + 1] = payload
  k, a = k + 1 + spec.nkeys, a + 2 + spec.nargs
end
end_run()
return out
