--[[
  The reservations' helpers: read, check, write and release a reservation hash and its expiry index entry.
  billing/ledger/scripts.py puts this file after lua/_prelude.lua (whose locals it uses) in the library.
]]
local RESERVATION_STATUSES = {reserved = true, recognized = true, cancelled = true, expired = true}

-- A reservation's fields (amount as a number in h.kopecks, expires_at as a number in h.deadline, nil for a
-- reservation made before reservations expired), or nil when there is none.
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
  -- refunded_amount: kopecks given back by refunds (lua/refund.lua), absent until the first one
  if h.refunded_amount then
    amount_arg(h.refunded_amount, key .. ' refunded_amount')
  end
  h.deadline = checked_int(h.expires_at, MAX_TIME, key .. ' expires_at')
  return h
end

-- A reservation's account must hold its money while it is reserved.
local function check_holds(key, reserved, h)
  if h.status == 'reserved' and (not reserved or reserved < h.kopecks) then
    fail(key .. ' does not hold the reserved ' .. h.amount)
  end
end

-- An existing reservation with its account's balances (the account checked to hold it while reserved), or nil
-- when there is no such reservation.
local function held_reservation(RESERVATION, ACCOUNT)
  local h = reservation(RESERVATION)
  if not h then
    return nil
  end
  local available, reserved = account(ACCOUNT)
  check_holds(RESERVATION, reserved, h)
  return h, available, reserved
end

-- A whole reservation hash from its fields (recognized_amount only once recognized, refunded_amount only once
-- refunded): the one writer of its layout.
local RESERVATION_FIELDS = {
  'user_id', 'service_id', 'order_id', 'amount', 'status', 'recognized_amount', 'created_at', 'updated_at',
  'expires_at', 'refunded_amount'}
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
    refunded_amount = h.refunded_amount or '0',
    created_at = h.created_at, updated_at = h.updated_at, expires_at = h.expires_at or cjson.null,
  }
end

-- The outcome when a reservation call changes nothing (the same reserve, recognize or cancel again).
local function unchanged_reservation(h, user_id, available, reserved)
  return unchanged({reservation = reservation_body(h),
    balance = balance_body(user_id, available or 0, reserved or 0)})
end

-- A TTL argument in seconds (the closed-record TTLs the reservation functions are given): 1 .. MAX_TIME.
local function ttl_arg(value, what)
  positive_arg(value, MAX_TIME, what, 'a positive number of seconds')
  return value
end

-- A reservation's member in its partition's expiry index (billing/ledger/scripts.py RedisKeys.expiry).
local function expiry_member(h)
  return h.user_id .. ':' .. h.service_id .. ':' .. h.order_id
end

-- Whether a reservation is past its deadline by the partition's clock while still reserved: it must be
-- released (expire_now) before anything else is done with it.
local function due(h)
  return h.status == 'reserved' and h.deadline ~= nil and now(PART) >= h.deadline
end

-- Write phase: release a due reservation (due(h)) to its account's available money: status expired, updated
-- at its deadline (when it expired, whoever releases it), out of the expiry index, its record kept closed_ttl
-- seconds. Returns the release transaction (marked reason 'expired') and the account's new balances.
local function expire_now(ACCOUNT, RESERVATION, INDEX, h, catalog_name, closed_ttl)
  local reserved = rcall('HINCRBY', ACCOUNT, 'reserved', '-' .. h.amount)
  local available = rcall('HINCRBY', ACCOUNT, 'available', h.amount)
  h.status, h.updated_at = 'expired', h.expires_at
  rcall('HSET', RESERVATION, 'status', h.status, 'updated_at', h.updated_at)
  rcall('ZREM', INDEX, expiry_member(h))
  rcall('EXPIRE', RESERVATION, closed_ttl)
  local release = new_txn(PART, 'release', h.user_id, h.amount, available, reserved, {
    service_id = h.service_id, order_id = h.order_id, service_name = catalog_name or '', reason = 'expired'})
  return release, available, reserved
end

-- A reservation call that met a due reservation: it is released now, and the call is refused with `code`
-- (reservation_expired) or, for a repeated reserve of the same amount, answered unchanged.
local function expired_outcome(ACCOUNT, RESERVATION, INDEX, h, SERVICES, closed_ttl, code)
  local name = rcall('HGET', SERVICES, h.service_id)
  -- writes
  local release, available, reserved = expire_now(ACCOUNT, RESERVATION, INDEX, h, name, closed_ttl)
  append({release})
  if code then
    return refuse(code)
  end
  return unchanged_reservation(h, h.user_id, available, reserved)
end

-- Recognize or cancel of a reservation that is no longer reserved: the refusal's kind and outcome (a due one
-- released first), or nil while it is reserved.
local function closed_outcome(ACCOUNT, RESERVATION, INDEX, h, SERVICES, closed_ttl)
  if due(h) then
    return expired_outcome(ACCOUNT, RESERVATION, INDEX, h, SERVICES, closed_ttl, 'reservation_expired')
  end
  if h.status == 'expired' then
    return refuse('reservation_expired')
  end
  if h.status ~= 'reserved' then
    return refuse('reservation_closed')
  end
end
