--[[
  Batch entry point (the body of the batch function): many operations in ONE run, in order, each one running
  the same function as its own (own idempotency check and record, own refusals, own transactions; the run
  appends them all to the outbox at its end, in order, OUTBOX_ENTRY_TXNS to an entry).
    KEYS[1] outbox stream   KEYS[2] meta hash   KEYS[3] totals hash   (of the run's partition)
    then for each operation: its idempotency record key (as KEYS[1] of an operation's function), then its keys
    (OPS[op].nkeys of them)
    ARGV[1] idempotency record TTL in seconds
    then for each operation: its name (a key of OPS), its '<fingerprint> <lang>' ('' = no key; as ARGV[1]
    of an operation's function), its partition number (the run's, the same for every operation), then its arguments
  Returns a flat array: kind1, outcome1, kind2, outcome2, ... with the kinds of the prelude and
    'error', <message>  the operation failed (an error of the prelude, or Redis's) and changed nothing;
    'skipped', ''       the operation did not run because one before it in this run failed.
  Error replies (nothing changed): 'batch: ...' for a call whose keys and arguments do not match its
  operations, and the prelude's errors about what the whole run writes (meta, totals, outbox, TTL).

  An error stops the run. Every check of an operation comes before its first write (see the prelude), so
  the failing operation wrote nothing; each operation before it is whole (its writes and idempotency record),
  and end_run still writes their outbox entries and the ids, clock and totals they counted; the operations after
  it do not run, since the error means the ledger is not what the checks expect. A caller retries those
  (with their Idempotency-Keys the completed ones replay).
  Every operation of a run is one of the run's partition (billing/ledger/service.py groups them); what may lie
  outside it is an operation's idempotency record (on one Redis, at its key's home) and a transfer's
  recipient partition.
]]
IDEM_TTL = ARGV[1]
-- Check the whole layout before anything runs: a malformed call changes nothing.
local k, a = 4, 2
while a <= #ARGV do
  local spec = OPS[ARGV[a]]
  if not spec then
    return redis.error_reply('batch: unknown operation ' .. tostring(ARGV[a]))
  end
  if ARGV[a + 2] ~= ARGV[4] then
    return redis.error_reply('batch: operations of more than one partition in one run')
  end
  k, a = k + 1 + spec.nkeys, a + 3 + spec.nargs
end
if k ~= #KEYS + 1 or a ~= #ARGV + 1 then
  return redis.error_reply('batch: keys and arguments do not match the operations')
end
begin_run(ARGV[4] or '0', KEYS[1], KEYS[2], KEYS[3], true)
local out = {}
local failed = false
k, a = 4, 2
while a <= #ARGV do
  local spec = OPS[ARGV[a]]
  local kind, payload = 'skipped', ''
  if not failed then
    local ok
    ok, kind, payload = pcall(run_op, spec, KEYS[k], ARGV[a + 1], k + 1, a + 3)
    if not ok then
      failed = true
      kind, payload = 'error', type(kind) == 'table' and tostring(kind.err) or tostring(kind)
    end
  end
  out[#out + 1] = kind
  out[#out + 1] = payload
  k, a = k + 1 + spec.nkeys, a + 3 + spec.nargs
end
end_run()
return out
