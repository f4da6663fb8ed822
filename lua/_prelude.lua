--[[
  Shared prelude: billing/ledger.py builds every script as this prelude + operation files + an entry point.
  Each operation file adds one function to OPS; the entry point decides how many operations one script
  run executes:
    single script (one per operation, lua/<op>.lua + `return run_single('<op>')`): ONE operation,
      atomically, in ONE round trip;
    batch script (every operation file + lua/_batch.lua): many operations in ONE script run, each one
      running exactly the same function as its single script, with its own idempotency record.

  Input of a single script:
    KEYS[1] idempotency record   (string "<fingerprint>\n<outcome json>", read only if ARGV[1] ~= '')
    KEYS[2] outbox stream        (XADD one entry per money movement: field txns, optional services)
    KEYS[3] meta hash            (seq: last transaction id; clock: last timestamp in ms, kept monotonic)
    KEYS[4] totals hash          (deposited, withdrawn, revenue: kopecks, for conservation checks)
    KEYS[5..] the operation's keys (see its file)
    ARGV[1] request fingerprint and the answer's language, '<fingerprint> <lang>' ('' = the request
            carries no Idempotency-Key); the language is recorded with the outcome (as "lang") so that a
            replay renders exactly as the first answer did
    ARGV[2] idempotency record TTL in seconds
    ARGV[3..] the operation's arguments (see its file)

  Every operation has one outcome:
    {'new', outcome}     the operation ran now (money moved, or a business refusal was recorded)
    {'replay', outcome}  the same key and fingerprint ran before: its recorded outcome, nothing changed
    {'reused', ''}       the key was used with another fingerprint: nothing changed
  outcome is JSON: {"status": <http status>, "body": {...}} or {"status": <4xx>, "error": "<code>"}.
  Ids and money travel as decimal strings: Lua numbers are doubles, and cjson prints 14 digits only.
]]
local rcall = redis.call
-- available + reserved of one account never exceeds this (10 000 000 000 000.00 rubles < 2^53 kopecks)
local MAX_BALANCE = 1000000000000000

-- Set by the entry point for the whole run.
local OUTBOX_KEY, META_KEY, TOTALS_KEY, IDEM_TTL
-- Set for each operation: its idempotency record key, request fingerprint and the answer's language.
local IDEM_KEY, FINGERPRINT, LANG
-- The operations: OPS[name] = {nkeys = <its keys>, nargs = <its arguments>, run = function(k, a)},
-- run reads its keys from KEYS[k], KEYS[k + 1], ... and its arguments from ARGV[a], ARGV[a + 1], ...
local OPS = {}

local function int(n)
  return string.format('%d', n)
end

-- One timestamp per script run (a run is one atomic step), never behind the last one used.
local now_ms = nil
local function clock()
  if not now_ms then
    local t = rcall('TIME')
    local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local last = tonumber(rcall('HGET', META_KEY, 'clock') or '0')
    if ms < last then
      ms = last
    end
    rcall('HSET', META_KEY, 'clock', int(ms))
    now_ms = ms
  end
  return now_ms
end

-- Transaction ids and totals: one HINCRBY for the run's first id, then counted here and written when the
-- run ends (end_run), so a batch run does not pay two Redis calls per operation for them.
local last_id, ids_counted = nil, false
local function next_id()
  if last_id then
    last_id = last_id + 1
    ids_counted = true
  else
    last_id = rcall('HINCRBY', META_KEY, 'seq', 1)
  end
  return last_id
end

local totals_added = {}
local function add_total(field, amount)
  totals_added[field] = (totals_added[field] or 0) + tonumber(amount) -- exact: a run adds far below 2^53
end

local function end_run()
  if ids_counted then
    rcall('HSET', META_KEY, 'seq', int(last_id))
  end
  for field, amount in pairs(totals_added) do
    rcall('HINCRBY', TOTALS_KEY, field, int(amount))
  end
end

local function record(outcome)
  if LANG ~= '' then
    outcome.lang = LANG
  end
  local payload = cjson.encode(outcome)
  if FINGERPRINT ~= '' then
    rcall('SET', IDEM_KEY, FINGERPRINT .. '\n' .. payload, 'EX', IDEM_TTL)
  end
  return 'new', payload
end

local function refuse(status, code)
  return record({status = status, error = code})
end

-- Success: append the transactions (and catalog changes) to the outbox, then record the outcome.
-- One outbox entry per operation, as when it runs alone (a batch's outbox is the same as sequential calls').
local function finish(status, body, txns, services)
  if txns or services then
    local fields = {}
    if txns then
      fields[#fields + 1] = 'txns'
      fields[#fields + 1] = cjson.encode(txns)
    end
    if services then
      fields[#fields + 1] = 'services'
      fields[#fields + 1] = cjson.encode(services)
    end
    rcall('XADD', OUTBOX_KEY, '*', unpack(fields))
  end
  return record({status = status, body = body})
end

-- One operation with its idempotency check: returns kind ('new', 'replay', 'reused') and outcome JSON.
local function run_op(spec, idem_key, fingerprint, k, a)
  IDEM_KEY = idem_key
  FINGERPRINT, LANG = string.match(fingerprint, '^(%S*) ?(.*)$')
  if FINGERPRINT ~= '' then
    local stored = rcall('GET', IDEM_KEY)
    if stored then
      local sep = string.find(stored, '\n', 1, true)
      if sep and string.sub(stored, 1, sep - 1) == FINGERPRINT then
        return 'replay', string.sub(stored, sep + 1)
      end
      return 'reused', ''
    end
  end
  return spec.run(k, a)
end

-- available, reserved of an account, or nil when the account does not exist yet
local function account(key)
  local v = rcall('HMGET', key, 'available', 'reserved')
  if not v[1] then
    return nil, nil
  end
  return tonumber(v[1]), tonumber(v[2] or '0')
end

local function balance_body(user_id, available, reserved)
  return {user_id = user_id, available = int(available), reserved = int(reserved)}
end

-- Why amount cannot be taken out of an account's available money (status, code), or nil when it can.
local function debit_problem(available, amount)
  if not available then
    return 404, 'account_not_found'
  end
  if available < tonumber(amount) then
    return 409, 'insufficient_funds'
  end
  return nil
end

-- A transaction record: the outbox and the history carry exactly this.
local function new_txn(kind, user_id, amount, available, reserved, extra)
  local txn = {
    id = int(next_id()),
    type = kind,
    user_id = user_id,
    amount = amount,
    available_after = int(available),
    reserved_after = int(reserved),
    created_at = int(clock()),
  }
  if extra then
    for k, v in pairs(extra) do
      if v ~= '' then
        txn[k] = v
      end
    end
  end
  return txn
end

local function reservation_body(key)
  local r = rcall('HGETALL', key)
  local h = {}
  for i = 1, #r, 2 do
    h[r[i]] = r[i + 1]
  end
  return {
    user_id = h.user_id, service_id = h.service_id, order_id = h.order_id,
    amount = h.amount, status = h.status, recognized_amount = h.recognized_amount or cjson.null,
    created_at = h.created_at, updated_at = h.updated_at,
  }
end

-- The answer when a reservation call changes nothing (the same reserve, recognize or cancel again).
local function unchanged_reservation(key, user_id, available, reserved)
  return finish(200, {reservation = reservation_body(key),
    balance = balance_body(user_id, available or 0, reserved or 0)})
end

-- Entry point of a single script: one operation, laid out as described at the top.
local function run_single(name)
  OUTBOX_KEY, META_KEY, TOTALS_KEY, IDEM_TTL = KEYS[2], KEYS[3], KEYS[4], ARGV[2]
  local kind, payload = run_op(OPS[name], KEYS[1], ARGV[1], 5, 3)
  end_run()
  return {kind, payload}
end
