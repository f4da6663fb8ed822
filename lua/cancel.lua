--[[
  cancel: return the whole reserved amount of a reservation to available.
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] services catalog hash;
    KEYS[k + 3] the partition's expiry index (sorted set, see lua/reserve.lua)
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;  ARGV[a + 3] comment ('' = none);
    ARGV[a + 4] TTL in seconds of the record once cancelled or expired
  Outcomes: applied {reservation, balance, transaction (release)}; unchanged {reservation, balance} when
            already cancelled; refused reservation_not_found; refused reservation_closed (recognized);
            refused reservation_expired (expired; or at or after its deadline and still reserved: then it is
            released now, a release transaction in the outbox, status expired).
  Errors (see the prelude): a bad argument, a broken account or reservation hash (or a reserved one
  whose account does not hold it), a catalog key that is not a hash, an expiry index that is not a sorted set.
]]
OPS.cancel = {nkeys = 4, nargs = 5, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES, INDEX = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id, comment = id_arg(ARGV[a + 2], 'order_id'), ARGV[a + 3]
  local closed_ttl = ttl_arg(ARGV[a + 4], 'closed TTL')
  check_type(INDEX, 'zset')
  local h, available, reserved = held_reservation(RESERVATION, ACCOUNT)
  if not h then
    return refuse('reservation_not_found')
  end
  if h.status == 'cancelled' then
    return unchanged_reservation(h, user_id, available, reserved)
  end
  local kind, outcome = closed_outcome(ACCOUNT, RESERVATION, INDEX, h, SERVICES, closed_ttl)
  if kind then
    return kind, outcome
  end
  local name = rcall('HGET', SERVICES, service_id) or ''
  -- writes
  reserved = rcall('HINCRBY', ACCOUNT, 'reserved', '-' .. h.amount)
  available = rcall('HINCRBY', ACCOUNT, 'available', h.amount)
  h.status, h.updated_at = 'cancelled', clock_text(PART)
  rcall('HSET', RESERVATION, 'status', h.status, 'updated_at', h.updated_at)
  rcall('ZREM', INDEX, expiry_member(h))
  rcall('EXPIRE', RESERVATION, closed_ttl)
  local release = new_txn(PART, 'release', user_id, h.amount, available, reserved, {
    comment = comment, service_id = service_id, order_id = order_id, service_name = name})
  return apply({reservation = reservation_body(h),
    balance = balance_after(release), transaction = release}, {release})
end}
