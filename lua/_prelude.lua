--[[
  Shared prelude: billing/ledger.py prepends this file to every operation script, so each
  operation is still ONE script, run atomically in ONE round trip.

  Common input of every operation script:
    KEYS[1] idempotency record   (string "<fingerprint>\n<outcome json>", read only if ARGV[1] ~= '')
    KEYS[2] outbox stream        (XADD one entry per money movement: field txns, optional services)
    KEYS[3] meta hash            (seq: last transaction id; clock: last timestamp in ms, kept monotonic)
    KEYS[4] totals hash          (deposited, withdrawn, revenue: kopecks, for conservation checks)
    ARGV[1] request fingerprint  ('' = the request carries no Idempotency-Key)
    ARGV[2] idempotency record TTL in seconds

  Every script returns a two-element array:
    {'new', outcome}     the operation ran now (money moved, or a business refusal was recorded)
    {'replay', outcome}  the same key and fingerprint ran before: its recorded outcome, nothing changed
    {'reused', ''}       the key was used with another fingerprint: nothing changed
  outcome is JSON: {"status": <http status>, "body": {...}} or {"status": <4xx>, "error": "<code>"}.
  Ids and money travel as decimal strings: Lua numbers are doubles, and cjson prints 14 digits only.
]]
local rcall = redis.call
local IDEM_KEY, OUTBOX_KEY, META_KEY, TOTALS_KEY = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local FINGERPRINT, IDEM_TTL = ARGV[1], ARGV[2]
-- available + reserved of one account never exceeds this (10 000 000 000 000.00 rubles < 2^53 kopecks)
local MAX_BALANCE = 1000000000000000

if FINGERPRINT ~= '' then
  local stored = rcall('GET', IDEM_KEY)
  if stored then
    local sep = string.find(stored, '\n', 1, true)
    if string.sub(stored, 1, sep - 1) == FINGERPRINT then
      return {'replay', string.sub(stored, sep + 1)}
    end
    return {'reused', ''}
  end
end

local function int(n)
  return string.format('%d', n)
end

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

local function record(outcome)
  local payload = cjson.encode(outcome)
  if FINGERPRINT ~= '' then
    rcall('SET', IDEM_KEY, FINGERPRINT .. '\n' .. payload, 'EX', IDEM_TTL)
  end
  return {'new', payload}
end

local function refuse(status, code)
  return record({status = status, error = code})
end

-- Success: append the transactions (and catalog changes) to the outbox, then record the outcome.
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

-- A transaction record: the outbox and the history carry exactly this.
local function new_txn(kind, user_id, amount, available, reserved, extra)
  local txn = {
    id = int(rcall('HINCRBY', META_KEY, 'seq', 1)),
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
