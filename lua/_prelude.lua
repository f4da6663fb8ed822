--[[
  Shared prelude: billing/ledger/scripts.py builds ONE Redis Functions library (FUNCTION LOAD) as its limits + this
  prelude + the reservations' helpers (lua/_reservations.lua) + every operation file + the bodies of lua/_batch.lua,
  lua/restore.lua and lua/expiry_read.lua, then registers one function per entry point. Redis runs the library's
  top level once, when it loads it (only redis.register_function exists then: the top level defines locals and
  functions and calls nothing); each FCALL runs one function, which starts with begin_call(). The limits come
  from billing/core/money.py and billing/core/parsing.py, as Lua locals:
    MAX_BALANCE    available + reserved of one account never exceeds this (kopecks, < 2^53)
    MAX_AMOUNT     the largest amount of one operation (kopecks)
    MAX_ID         the largest id (user, service, order), as decimal digits
    ID_SPAN        the most partitions there can be (1024): a transaction id is seq * ID_SPAN + partition
    OUTBOX_ENTRY_TXNS the most transactions in one outbox entry (a run appends its own at its end)
    MAX_EXPIRES_IN the longest a reservation may stay reserved (seconds)
  Each operation file adds one function to OPS; the entry point decides how many operations one run executes:
    an operation's function (one per operation, named after it; `run_single('<op>')`): ONE operation,
      atomically, in ONE round trip;
    the batch function (lua/_batch.lua): many operations in ONE run, each one running exactly the same function
      as its own, with its own idempotency record.
  Function names end in a hash of the library (billing/ledger/scripts.py Library), so that two versions of the
  service can share one Redis.

  A run belongs to one ledger partition (the user's; billing/ledger/scripts.py RedisKeys): its outbox, meta
  and totals are the run's partition keys below. A transfer between partitions is three runs, one partition
  each (lua/transfer_debit.lua, lua/transfer_credit.lua, lua/transfer_settle.lua); lua/transfer.lua can
  name a second partition's keys, and then every partition the run touches gets its own ids, clock, totals
  and outbox entries, but billing/ledger/scripts.py calls it within one partition only.
  Input of an operation's function:
    KEYS[1] idempotency record   (string "<fingerprint>\n<outcome json>", read and written only if
                                  ARGV[1] ~= ''; billing/ledger/scripts.py RedisKeys.idempotency_record
                                  says where it lives)
    KEYS[2] outbox stream        (XADD at the run's end: field txns, the run's transactions of the partition,
                                  OUTBOX_ENTRY_TXNS to an entry; services, its catalog changes)
    KEYS[3] meta hash            (seq: the partition's last sequence number; clock: its last timestamp in
                                  ms, kept monotonic)
    KEYS[4] totals hash          (deposited, withdrawn, revenue, transfers_in, transfers_out,
                                  transfers_reversed, refunded: kopecks of the partition's accounts, for
                                  conservation checks)
    KEYS[5..] the operation's keys (see its file)
    ARGV[1] request fingerprint and the answer's language, '<fingerprint> <lang>' ('' = the request
            carries no Idempotency-Key); the language is recorded with the outcome (as "lang") so that a
            replay renders exactly as the first answer did
    ARGV[2] idempotency record TTL in seconds
    ARGV[3] the partition number (0 .. ID_SPAN - 1) of KEYS[2..4]
    ARGV[4..] the operation's arguments (see its file)
  Idempotency: an operation's record holds its fingerprint and outcome and answers a retry (replay) or
  another request (reused). A record key may instead hold a pointer, "<fingerprint>\n@<partition>",
  claimed before the run under Redis Cluster for an operation of another partition: another fingerprint
  there means the key was used for another request (reused).
  Transaction ids: seq * ID_SPAN + partition, seq counting 1, 2, 3 ... in each partition, so ids are unique,
  the ids of one user (one partition) increase with the order of their operations, and every id stays
  below 2^53 (seq <= MAX_SEQ): exact in Lua's doubles and in JavaScript.

  Every operation has one outcome:
    {'new', outcome}     the operation ran now (money moved, or a business refusal was recorded)
    {'replay', outcome}  the same key and fingerprint ran before: its recorded outcome, nothing changed
    {'reused', ''}       the key was used with another fingerprint: nothing changed
  outcome is JSON, in the ledger's terms (billing/api/outcomes.py alone turns it into HTTP):
    {"result": "applied", "body": {...}}    the operation changed the ledger; body: what it did
    {"result": "unchanged", "body": {...}}  the ledger already held what the operation asks (a repeat)
    {"result": "refused", "code": "<code>"} a business refusal (a code of billing/core/errors.py)
    {"result": "pending", "transfer": {...}} a transfer between partitions whose debit is done and whose
                                            credit and settlement are not (lua/transfer_debit.lua): the
                                            caller completes them, and the record then holds the final outcome
  Ids and money travel as decimal strings: Lua numbers are doubles, and cjson prints 14 digits only.

  Errors (an error reply, 'ledger: ...' or Redis's own, e.g. WRONGTYPE or OOM): an argument that is
  not what billing/ledger/scripts.py sends, a key of the wrong type, a stored value this ledger never writes
  (a balance or amount that is not a canonical integer within its bound, a reservation whose account
  cannot hold it, an idempotency record that is not "<fingerprint>\n<outcome json>").

  Redis does not undo a function's writes when it fails, so every operation is two phases: first every
  read and check (anything that can refuse or raise), then its writes, which cannot fail on what the
  checks let through. begin_run checks what the whole run writes (meta, outbox, the TTL, and for a batch
  run every total) before the first operation, partition() the same of another partition before the
  operation naming it writes, and check_total a total of a single run in its operation's check phase. An
  error therefore always comes before the failing operation's first write.
  What the write phase does beyond the checked values cannot fail: cjson.encode of strings, XADD '*'
  (only at the largest stream id), SET (any type), and Redis refuses for memory (OOM) only a function's
  first write (or the whole call, before it starts). An operation's function that fails changes nothing; for
  a batch run see lua/_batch.lua.
]]
-- The running call's redis.call, keys and arguments, set by begin_call (redis.call exists only while a function
-- runs, not while its library loads).
local rcall, KEYS, ARGV

-- What follows the fingerprint in a pointer (never the start of an outcome's JSON).
local POINTER_MARK = '@'

-- Set by the entry point for the whole run: the idempotency TTL and the run's partition (see partition()).
local IDEM_TTL, PART
-- Set for each operation: its idempotency record key, request fingerprint and the answer's language.
local IDEM_KEY, FINGERPRINT, LANG
-- The operations: OPS[name] = {nkeys = <its keys>, nargs = <its arguments>, run = function(k, a)},
-- run reads its keys from KEYS[k], KEYS[k + 1], ... and its arguments from ARGV[a], ARGV[a + 1], ...
local OPS = {}

local function int(n)
  return string.format('%d', n)
end

-- An error of the run: a broken ledger or a bad call, raised before the operation's first write.
local function fail(message)
  error('ledger: ' .. message, 0)
end

-- A decimal integer as this ledger writes it (no sign unless negative, no leading zero), within
-- -limit .. limit, as a number; nil for nil. Redis's HINCRBY reads exactly these.
local function checked_int(value, limit, what)
  if not value then
    return nil
  end
  if value == '0' then -- (a string comparison costs nothing: Lua strings are interned)
    return 0
  end
  -- The usual case first, at about half the cost of the pattern below: a number within the limit that
  -- prints back as exactly this text is a canonical integer. Anything else takes the full check.
  local n = tonumber(value)
  if n and math.abs(n) <= limit and string.format('%d', n) == value then
    return n
  end
  if type(value) ~= 'string' or not (value == '0' or string.match(value, '^%-?[1-9]%d*$'))
      or #value > 20 or math.abs(tonumber(value)) > limit then
    fail(what .. ' is not an integer within +-' .. int(limit) .. ': ' .. tostring(value))
  end
  return tonumber(value)
end

-- A positive integer argument within 1 .. limit, as a number; must_be says what it is in the error.
local function positive_arg(value, limit, what, must_be)
  local n = checked_int(value, limit, what)
  if not n or n < 1 then
    fail(what .. ' must be ' .. must_be .. ': ' .. tostring(value))
  end
  return n
end

-- An amount argument (kopecks): 1 .. MAX_AMOUNT.
local function amount_arg(value, what)
  return positive_arg(value, MAX_AMOUNT, what, 'a positive amount')
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

-- The state of each partition the run touches, read and checked by partition(); ids, clock and totals are
-- counted here and written by end_run, so a batch run pays no Redis call per operation for them, and an
-- operation's writes never include a call that could fail on them. A total is read and checked when an
-- operation first checks it (check_total, in its check phase), or for all of them at once when a batch run
-- begins (read_totals), so that a broken total refuses the whole run before its first write.
local PARTS = {} -- partition number (decimal string) -> state
local run_time = nil -- TIME at the run's first timestamp
local TOTAL_FIELDS = {
  'deposited', 'withdrawn', 'revenue', 'transfers_in', 'transfers_out', 'transfers_reversed', 'refunded'}
-- Sequence numbers keep every id below 2^53 (an exact double), with room left for the ids one run takes
-- (a batch run of 250 operations takes at most 500); times and TTLs stay exact doubles; totals stay far
-- inside HINCRBY's int64.
local MAX_SEQ, RUN_IDS, MAX_TIME, MAX_TOTAL = 2 ^ 43 - 1, 1024, 2 ^ 53 - 1, 2 ^ 62

-- The state of a partition (number: decimal string), read and checked the first time a run names it; the
-- same number must come with the same keys.
local function partition(number, outbox, meta, totals)
  local part = PARTS[number]
  if part then
    if part.outbox ~= outbox or part.meta ~= meta or part.totals ~= totals then
      fail('partition ' .. number .. ' is named with other keys')
    end
    return part
  end
  local n = checked_int(number, ID_SPAN - 1, 'partition')
  if n < 0 then
    fail('partition is not 0 .. ' .. int(ID_SPAN - 1) .. ': ' .. number)
  end
  check_type(outbox, 'stream') -- (XADD comes in the write phase; HMGET below fails on a non-hash by itself)
  local m = rcall('HMGET', meta, 'seq', 'clock')
  part = {number = n, outbox = outbox, meta = meta, totals = totals, stored_totals = {}, added = {}, txns = {}}
  part.stored_seq = checked_int(m[1], MAX_SEQ - RUN_IDS, meta .. ' seq') or 0
  part.stored_clock = checked_int(m[2], MAX_TIME, meta .. ' clock') or 0
  part.seq = part.stored_seq
  PARTS[number] = part
  return part
end

local function stored_total(part, field, value)
  part.stored_totals[field] = checked_int(value, MAX_TOTAL, part.totals .. ' ' .. field) or 0
  return part.stored_totals[field]
end

-- Every total of a partition, read and checked at once.
local function read_totals(part)
  local t = rcall('HMGET', part.totals, unpack(TOTAL_FIELDS))
  for i, field in ipairs(TOTAL_FIELDS) do
    stored_total(part, field, t[i])
  end
end

-- The run's own partition, from the entry point's keys and arguments (all_totals: a batch run's).
local function begin_run(number, outbox, meta, totals, all_totals)
  if (checked_int(IDEM_TTL, MAX_TIME, 'idempotency TTL') or 0) < 1 then
    fail('idempotency TTL must be positive: ' .. tostring(IDEM_TTL))
  end
  PART = partition(number, outbox, meta, totals)
  if all_totals then
    read_totals(PART)
  end
end

-- One time per run (a run is one atomic step); a partition's timestamps never go back. now() reads it,
-- clock() also stamps the partition with it (end_run stores it).
local function now(part)
  if not run_time then
    local t = rcall('TIME')
    run_time = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return math.max(run_time, part.stored_clock)
end

local function clock(part)
  part.now = now(part)
  return part.now
end

-- clock(part) as a decimal string (a run's operations mostly share one time: it is formatted once for them).
local function clock_text(part)
  local t = clock(part)
  if part.now_text_of ~= t then
    part.now_text, part.now_text_of = int(t), t
  end
  return part.now_text
end

local function next_id(part)
  part.seq = part.seq + 1
  return part.seq * ID_SPAN + part.number
end

-- Check phase: the partition's totals can take amount more (else an error: they are a conservation check).
local function check_total(part, field, amount)
  local stored = part.stored_totals[field] or stored_total(part, field, rcall('HGET', part.totals, field))
  if stored + (part.added[field] or 0) + amount > MAX_TOTAL then
    fail(part.totals .. ' ' .. field .. ' would pass ' .. int(MAX_TOTAL))
  end
end

-- Write phase.
local function add_total(part, field, amount)
  part.added[field] = (part.added[field] or 0) + amount -- exact: far below 2^53
end

-- The run's transactions of a partition in order, OUTBOX_ENTRY_TXNS to an entry, its catalog changes (the run's
-- partition only) in the first entry.
local function write_outbox(part)
  local txns, first = part.txns, 1
  repeat
    local fields = {}
    if first <= #txns then
      local last = math.min(first + OUTBOX_ENTRY_TXNS - 1, #txns)
      fields[1], fields[2] = 'txns', cjson.encode({unpack(txns, first, last)})
      first = last + 1
    end
    if part.services then
      fields[#fields + 1], fields[#fields + 2] = 'services', cjson.encode(part.services)
      part.services = nil
    end
    if #fields == 0 then
      return
    end
    rcall('XADD', part.outbox, '*', unpack(fields))
  until first > #txns
end

-- Writes what the run counted, partition by partition; nothing here can fail on what partition() checked. The
-- outbox comes last: were its XADD ever to fail, the ids it carries stay taken (a gap, never an id given twice).
local function end_run()
  for _, part in pairs(PARTS) do
    local meta = {}
    if part.seq ~= part.stored_seq then
      meta[#meta + 1], meta[#meta + 2] = 'seq', int(part.seq)
    end
    if part.now and part.now ~= part.stored_clock then
      meta[#meta + 1], meta[#meta + 2] = 'clock', int(part.now)
    end
    if #meta > 0 then
      rcall('HSET', part.meta, unpack(meta))
    end
    for field, amount in pairs(part.added) do
      rcall('HINCRBY', part.totals, field, int(amount))
    end
    write_outbox(part)
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

-- The partition of each transaction record new_txn made (records are JSON: the partition stays out of them).
local TXN_PART = {}

-- Append the transactions to their partitions' outboxes (catalog changes to the run's): end_run writes them, in
-- the order appended (write_outbox), so a run's outbox holds exactly the transactions of the same operations run
-- one by one, in the same order.
local function append(txns, services)
  for _, txn in ipairs(txns or {}) do
    local list = TXN_PART[txn].txns
    list[#list + 1] = txn
  end
  if services then
    PART.services = PART.services or {}
    for service_id, name in pairs(services) do
      PART.services[service_id] = name -- (a later change of the run wins, as a later entry would)
    end
  end
end

-- Applied: append the transactions, then record the outcome.
local function apply(body, txns, services)
  append(txns, services)
  return record({result = 'applied', body = body})
end

-- A stored idempotency record or pointer: its fingerprint, and its outcome JSON (nil for a pointer).
local function idempotency_entry(key)
  local stored = rcall('GET', key)
  if not stored then
    return nil, nil
  end
  local sep = string.find(stored, '\n', 1, true)
  if not sep then
    fail('idempotency record ' .. key .. ' has no fingerprint')
  end
  local payload = string.sub(stored, sep + 1)
  if string.sub(payload, 1, #POINTER_MARK) == POINTER_MARK then
    return string.sub(stored, 1, sep - 1), nil
  end
  local ok, outcome = pcall(cjson.decode, payload)
  if not ok or type(outcome) ~= 'table' or type(outcome.result) ~= 'string' then
    fail('idempotency record ' .. key .. ' holds no outcome')
  end
  return string.sub(stored, 1, sep - 1), payload
end

-- One operation with its idempotency check: returns kind ('new', 'replay', 'reused') and outcome JSON.
local function run_op(spec, idem_key, fingerprint, k, a)
  IDEM_KEY = idem_key
  FINGERPRINT, LANG = string.match(fingerprint, '^(%S*) ?(.*)$')
  if FINGERPRINT ~= '' then
    if string.find(FINGERPRINT, '\n', 1, true) then
      fail('a fingerprint has no line break')
    end
    local stored, payload = idempotency_entry(IDEM_KEY)
    if stored and stored ~= FINGERPRINT then
      return 'reused', ''
    end
    if payload then
      return 'replay', payload
    end
    -- (a pointer with this fingerprint: this request's own claim)
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

-- A transaction record of a user of partition part: the outbox and the history carry exactly this.
local function new_txn(part, kind, user_id, amount, available, reserved, extra)
  local txn = {
    id = int(next_id(part)),
    type = kind,
    user_id = user_id,
    amount = amount,
    available_after = int(available),
    reserved_after = int(reserved),
    created_at = clock_text(part),
  }
  TXN_PART[txn] = part
  if extra then
    for k, v in pairs(extra) do
      if v ~= '' then
        txn[k] = v
      end
    end
  end
  return txn
end

-- The balance a transaction left its user with, from its own after-values (already decimal strings).
local function balance_after(txn)
  return {user_id = txn.user_id, available = txn.available_after, reserved = txn.reserved_after}
end

-- The start of every call of the library's functions (billing/ledger/scripts.py build_library registers them):
-- the call's redis.call, keys and arguments, and a clean run state (a library's locals outlive each call, and an
-- error may leave one's behind).
local function begin_call(keys, args)
  rcall, KEYS, ARGV = redis.call, keys, args
  IDEM_TTL, PART, IDEM_KEY, FINGERPRINT, LANG = nil, nil, nil, nil, nil
  PARTS, run_time, TXN_PART = {}, nil, {}
end

-- Entry point of an operation's function: one operation, laid out as described at the top.
local function run_single(name)
  IDEM_TTL = ARGV[2]
  begin_run(ARGV[3], KEYS[2], KEYS[3], KEYS[4])
  local kind, payload = run_op(OPS[name], KEYS[1], ARGV[1], 5, 4)
  end_run()
  return {kind, payload}
end
