--[[
  Shared prelude: billing/ledger/scripts.py builds every script as its limits + this prelude + operation files
  + an entry point. The limits come from billing/core/money.py and billing/core/parsing.py, as Lua locals:
    MAX_BALANCE    available + reserved of one account never exceeds this (kopecks, < 2^53)
    MAX_AMOUNT     the largest amount of one operation (kopecks)
    MAX_ID         the largest id (user, service, order), as decimal digits
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
  outcome is JSON, in the ledger's terms (billing/api/outcomes.py alone turns it into HTTP):
    {"result": "applied", "body": {...}}    the operation changed the ledger; body: what it did
    {"result": "unchanged", "body": {...}}  the ledger already held what the operation asks (a repeat)
    {"result": "refused", "code": "<code>"} a business refusal (a code of billing/core/errors.py)
  Ids and money travel as decimal strings: Lua numbers are doubles, and cjson prints 14 digits only.

  Errors (a script error reply, 'ledger: ...' or Redis's own, e.g. WRONGTYPE or OOM): an argument that is
  not what billing/ledger/scripts.py sends, a key of the wrong type, a stored value this ledger never writes
  (a balance or amount that is not a canonical integer within its bound, a reservation whose account
  cannot hold it, an idempotency record that is not "<fingerprint>\n<outcome json>").

  Redis does not undo a script's writes when it fails, so every operation is two phases: first every
  read and check (anything that can refuse or raise), then its writes, which cannot fail on what the
  checks let through. begin_run checks what the whole run writes (meta, totals, outbox, the TTL) before
  the first operation. An error therefore always comes before the failing operation's first write.
  What the write phase does beyond the checked values cannot fail: cjson.encode of strings, XADD '*'
  (only at the largest stream id), SET (any type), and Redis refuses for memory (OOM) only a script's
  first write. A single script's error changes nothing; for a batch run see lua/_batch.lua.
]]
local rcall = redis.call

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

-- An error of the script: a broken ledger or a bad call, raised before the operation's first write.
local function fail(message)
  error('ledger: ' .. message, 0)
end

-- A decimal integer as this ledger writes it (no sign unless negative, no leading zero), within
-- -limit .. limit, as a number; nil for nil. Redis's HINCRBY reads exactly these.
local function checked_int(value, limit, what)
  if not value then
    return nil
  end
  if type(value) ~= 'string' or not (value == '0' or string.match(value, '^%-?[1-9]%d*$'))
      or #value > 20 or math.abs(tonumber(value)) > limit then
    fail(what .. ' is not an integer within +-' .. int(limit) .. ': ' .. tostring(value))
  end
  return tonumber(value)
end

-- An amount argument (kopecks): 1 .. MAX_AMOUNT.
local function amount_arg(value, what)
  local n = checked_int(value, MAX_AMOUNT, what)
  if not n or n < 1 then
    fail(what .. ' must be a positive amount: ' .. tostring(value))
  end
  return n
end

-- An id argument (user, service, order): 1 .. MAX_ID as decimal digits; kept as a string.
local function id_arg(value, what)
  if type(value) ~= 'string' or not string.match(value, '^[1-9]%d*$') or #value > #MAX_ID
      or (#value == #MAX_ID and value > MAX_ID) then
    fail(what .. ' is not an id: ' .. tostring(value))
  end
  return value
end

-- A key must hold one of these types (or not exist).
local function check_type(key, wanted)
  local kind = rcall('TYPE', key)
  kind = type(kind) == 'table' and kind.ok or kind
  if kind ~= 'none' and kind ~= wanted then
    fail(key .. ' holds a ' .. tostring(kind) .. ', not a ' .. wanted)
  end
end

-- The run's state, read and checked by begin_run; ids, clock and totals are counted here and written by
-- end_run, so a batch run pays no Redis call per operation for them, and an operation's writes never
-- include a call that could fail on them.
local last_id, stored_id, stored_clock, now_ms = nil, nil, nil, nil
local stored_totals, totals_added = {}, {}
local TOTAL_FIELDS = {'deposited', 'withdrawn', 'revenue'}
-- Ids stay exact doubles; totals stay far inside HINCRBY's int64.
local MAX_SEQ, MAX_TOTAL = 2 ^ 53 - 1, 2 ^ 62

local function begin_run()
  if (checked_int(IDEM_TTL, MAX_SEQ, 'idempotency TTL') or 0) < 1 then
    fail('idempotency TTL must be positive: ' .. tostring(IDEM_TTL))
  end
  check_type(OUTBOX_KEY, 'stream') -- (XADD comes in the write phase; HMGET below fails on a non-hash by itself)
  local meta = rcall('HMGET', META_KEY, 'seq', 'clock')
  stored_id = checked_int(meta[1], MAX_SEQ, META_KEY .. ' seq') or 0
  stored_clock = checked_int(meta[2], MAX_SEQ, META_KEY .. ' clock') or 0
  last_id = stored_id
  local totals = rcall('HMGET', TOTALS_KEY, unpack(TOTAL_FIELDS))
  for i, field in ipairs(TOTAL_FIELDS) do
    stored_totals[field] = checked_int(totals[i], MAX_TOTAL, TOTALS_KEY .. ' ' .. field) or 0
  end
end

-- One timestamp per script run (a run is one atomic step), never behind the last one used.
local function clock()
  if not now_ms then
    local t = rcall('TIME')
    now_ms = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), stored_clock)
  end
  return now_ms
end

local function next_id()
  last_id = last_id + 1
  return last_id
end

-- Check phase: the totals can take amount more (else an error: they are a conservation check).
local function check_total(field, amount)
  if stored_totals[field] + (totals_added[field] or 0) + amount > MAX_TOTAL then
    fail(TOTALS_KEY .. ' ' .. field .. ' would pass ' .. int(MAX_TOTAL))
  end
end

-- Write phase.
local function add_total(field, amount)
  totals_added[field] = (totals_added[field] or 0) + amount -- exact: far below 2^53
end

-- Writes what the run counted; nothing here can fail on what begin_run checked.
local function end_run()
  local meta = {}
  if last_id ~= stored_id then
    meta[#meta + 1], meta[#meta + 2] = 'seq', int(last_id)
  end
  if now_ms and now_ms ~= stored_clock then
    meta[#meta + 1], meta[#meta + 2] = 'clock', int(now_ms)
  end
  if #meta > 0 then
    rcall('HSET', META_KEY, unpack(meta))
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

-- A business refusal: code is one of billing/core/errors.py's (tests/unit/test_outcomes.py holds them together).
local function refuse(code)
  return record({result = 'refused', code = code})
end

-- The ledger already holds what the operation asks: nothing written but the idempotency record.
local function unchanged(body)
  return record({result = 'unchanged', body = body})
end

-- Applied: append the transactions (and catalog changes) to the outbox, then record the outcome.
-- One outbox entry per operation, as when it runs alone (a batch's outbox is the same as sequential calls').
local function apply(body, txns, services)
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
  return record({result = 'applied', body = body})
end

-- One operation with its idempotency check: returns kind ('new', 'replay', 'reused') and outcome JSON.
local function run_op(spec, idem_key, fingerprint, k, a)
  IDEM_KEY = idem_key
  FINGERPRINT, LANG = string.match(fingerprint, '^(%S*) ?(.*)$')
  if FINGERPRINT ~= '' then
    if string.find(FINGERPRINT, '\n', 1, true) then
      fail('a fingerprint has no line break')
    end
    local stored = rcall('GET', IDEM_KEY)
    if stored then
      local sep = string.find(stored, '\n', 1, true)
      if not sep then
        fail('idempotency record ' .. IDEM_KEY .. ' has no fingerprint')
      end
      if string.sub(stored, 1, sep - 1) ~= FINGERPRINT then
        return 'reused', ''
      end
      local payload = string.sub(stored, sep + 1)
      local ok, outcome = pcall(cjson.decode, payload)
      if not ok or type(outcome) ~= 'table' or type(outcome.result) ~= 'string' then
        fail('idempotency record ' .. IDEM_KEY .. ' holds no outcome')
      end
      return 'replay', payload
    end
  end
  return spec.run(k, a)
end

-- available, reserved of an account (each 0 .. MAX_BALANCE), or nil when the account does not exist yet
local function account(key)
  local v = rcall('HMGET', key, 'available', 'reserved')
  if not v[1] then
    if v[2] or rcall('EXISTS', key) == 1 then
      fail(key .. ' has no available balance')
    end
    return nil, nil
  end
  local available = checked_int(v[1], MAX_BALANCE, key .. ' available')
  local reserved = checked_int(v[2] or '0', MAX_BALANCE, key .. ' reserved')
  if available < 0 or reserved < 0 then
    fail(key .. ' holds a negative balance')
  end
  return available, reserved
end

local function balance_body(user_id, available, reserved)
  return {user_id = user_id, available = int(available), reserved = int(reserved)}
end

-- Why amount cannot be taken out of an account's available money (a refusal code), or nil when it can.
local function debit_problem(available, amount)
  if not available then
    return 'account_not_found'
  end
  if available < amount then
    return 'insufficient_funds'
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

local RESERVATION_STATUSES = {reserved = true, recognized = true, cancelled = true}

-- A reservation's fields (amount as a number in h.kopecks), or nil when there is none.
local function reservation(key)
  local r = rcall('HGETALL', key)
  if #r == 0 then
    return nil
  end
  local h = {}
  for i = 1, #r, 2 do
    h[r[i]] = r[i + 1]
  end
  h.kopecks = amount_arg(h.amount, key .. ' amount')
  if not RESERVATION_STATUSES[h.status] then
    fail(key .. ' has an unknown status: ' .. tostring(h.status))
  end
  if h.recognized_amount then
    amount_arg(h.recognized_amount, key .. ' recognized_amount')
  end
  return h
end

-- A reservation's account must hold its money while it is reserved.
local function check_holds(key, reserved, h)
  if h.status == 'reserved' and (not reserved or reserved < h.kopecks) then
    fail(key .. ' does not hold the reserved ' .. h.amount)
  end
end

-- A whole reservation hash from its fields (recognized_amount only once recognized): the one writer of its layout.
local RESERVATION_FIELDS = {
  'user_id', 'service_id', 'order_id', 'amount', 'status', 'recognized_amount', 'created_at', 'updated_at'}
local function write_reservation(key, h)
  local args = {}
  for _, field in ipairs(RESERVATION_FIELDS) do
    if h[field] then
      args[#args + 1] = field
      args[#args + 1] = h[field]
    end
  end
  rcall('HSET', key, unpack(args))
end

-- The reservation as the API shows it, from its fields (h from reservation(), with any changes).
local function reservation_body(h)
  return {
    user_id = h.user_id, service_id = h.service_id, order_id = h.order_id,
    amount = h.amount, status = h.status, recognized_amount = h.recognized_amount or cjson.null,
    created_at = h.created_at, updated_at = h.updated_at,
  }
end

-- The outcome when a reservation call changes nothing (the same reserve, recognize or cancel again).
local function unchanged_reservation(h, user_id, available, reserved)
  return unchanged({reservation = reservation_body(h),
    balance = balance_body(user_id, available or 0, reserved or 0)})
end

-- Entry point of a single script: one operation, laid out as described at the top.
local function run_single(name)
  OUTBOX_KEY, META_KEY, TOTALS_KEY, IDEM_TTL = KEYS[2], KEYS[3], KEYS[4], ARGV[2]
  begin_run()
  local kind, payload = run_op(OPS[name], KEYS[1], ARGV[1], 5, 3)
  end_run()
  return {kind, payload}
end
