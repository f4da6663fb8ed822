--[[
  recognize: take amount (<= the reservation) out of reserved as the service's revenue; return the
  remainder of the reservation to available (partial capture).
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] services catalog hash;
    KEYS[k + 3] the partition's expiry index (sorted set, see lua/reserve.lua)
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;
    ARGV[a + 3] amount in kopecks (1 .. MAX_AMOUNT);
    ARGV[a + 4] TTL in seconds of the record once recognized;  ARGV[a + 5] TTL of it once expired
  Outcomes: applied {reservation, balance, transaction (charge), release_transaction (when a remainder)};
            unchanged {reservation, balance} when already recognized with the same amount;
            refused reservation_not_found, reservation_closed (cancelled, or recognized with another
            amount), reservation_expired (expired; or at or after its deadline and still reserved: then it
            is released now, a release transaction in the outbox, status expired), amount_exceeds_reservation.
  Errors (see the prelude): a bad argument, a broken account or reservation hash (or a reserved one
  whose account does not hold it), a catalog key that is not a hash, totals.revenue at its bound.
]]
OPS.recognize = {nkeys = 4, nargs = 6, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES, INDEX = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id, amount = id_arg(ARGV[a + 2], 'order_id'), ARGV[a + 3]
  local kopecks = amount_arg(amount, 'amount')
  local recognized_ttl, closed_ttl = ttl_arg(ARGV[a + 4], 'recognized TTL'), ttl_arg(ARGV[a + 5], 'closed TTL')
  check_type(INDEX, 'zset')
  local h, available, reserved = held_reservation(RESERVATION, ACCOUNT)
  if not h then
    return refuse('reservation_not_found')
  end
  if h.status == 'recognized' and h.recognized_amount == amount then
    return unchanged_reservation(h, user_id, available, reserved)
  end
  local kind, outcome = closed_outcome(ACCOUNT, RESERVATION, INDEX, h, SERVICES, closed_ttl)
  if kind then
    return kind, outcome
  end
  if kopecks > h.kopecks then
    return refuse('amount_exceeds_reservation')
  end
  check_total(PART, 'revenue', kopecks)
  local name = rcall('HGET', SERVICES, service_id) or ''
  -- writes
  local remainder = h.kopecks - kopecks
  reserved = rcall('HINCRBY', ACCOUNT, 'reserved', '-' .. amount)
  add_total(PART, 'revenue', kopecks)
  local refs = {service_id = service_id, order_id = order_id, service_name = name}
  local charge = new_txn(PART, 'charge', user_id, amount, available, reserved, refs)
  local txns = {charge}
  local release = nil
  if remainder > 0 then
    reserved = rcall('HINCRBY', ACCOUNT, 'reserved', int(-remainder))
    available = rcall('HINCRBY', ACCOUNT, 'available', int(remainder))
    release = new_txn(PART, 'release', user_id, int(remainder), available, reserved, refs)
    txns[2] = release
  end
  h.status, h.recognized_amount, h.updated_at = 'recognized', amount, clock_text(PART)
  rcall('HSET', RESERVATION, 'status', h.status, 'recognized_amount', amount, 'updated_at', h.updated_at)
  rcall('ZREM', INDEX, expiry_member(h))
  rcall('EXPIRE', RESERVATION, recognized_ttl)
  local body = {reservation = reservation_body(h),
    balance = balance_body(user_id, available, reserved), transaction = charge}
  if release then
    body.release_transaction = release
  end
  return apply(body, txns)
end}
