--[[
  expire: release a reservation at or after its deadline (expires_at, by the partition's clock) that is still
  reserved: its whole amount back to available, status expired. The sweeper (billing/ledger/expiry.py) runs it
  for each member of the expiry index whose score is due; any number of sweepers may run it for the same
  reservation at once with recognize and cancel: the first one to run releases it, the others find it closed.
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] services catalog hash;
    KEYS[k + 3] the partition's expiry index (sorted set, see lua/reserve.lua)
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;
    ARGV[a + 3] TTL in seconds of the record once expired
  Outcomes: applied {reservation, balance, transaction (release, reason expired)} when released now;
            unchanged {reservation} when it is not due yet, or is closed (any status but reserved);
            refused reservation_not_found. Except for a reservation not due yet, its member leaves the index.
  Errors (see the prelude): a bad argument, a broken account or reservation hash (or a reserved one whose
  account does not hold it), a catalog key that is not a hash, an expiry index that is not a sorted set.
]]
OPS.expire = {nkeys = 4, nargs = 4, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES, INDEX = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id = id_arg(ARGV[a + 2], 'order_id')
  local closed_ttl = ttl_arg(ARGV[a + 3], 'closed TTL')
  check_type(INDEX, 'zset')
  local h = reservation(RESERVATION)
  if not h then
    rcall('ZREM', INDEX, user_id .. ':' .. service_id .. ':' .. order_id)
    return refuse('reservation_not_found')
  end
  local _available, reserved = account(ACCOUNT)
  check_holds(RESERVATION, reserved, h)
  if due(h) then
    local name = rcall('HGET', SERVICES, service_id)
    -- writes
    local release, available
    release, available, reserved = expire_now(ACCOUNT, RESERVATION, INDEX, h, name, closed_ttl)
    return apply({reservation = reservation_body(h),
      balance = balance_body(user_id, available, reserved), transaction = release}, {release})
  end
  if h.status ~= 'reserved' then
    rcall('ZREM', INDEX, expiry_member(h))
  end
  return unchanged({reservation = reservation_body(h)})
end}
