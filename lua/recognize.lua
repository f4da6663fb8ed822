--[[
  recognize: take amount (<= the reservation) out of reserved as the service's revenue; return the
  remainder of the reservation to available (partial capture).
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] services catalog hash
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;
    ARGV[a + 3] amount in kopecks (1 .. MAX_AMOUNT)
  Outcomes: applied {reservation, balance, transaction (charge), release_transaction (when a remainder)};
            unchanged {reservation, balance} when already recognized with the same amount;
            refused reservation_not_found, reservation_closed (cancelled, or recognized with another
            amount), amount_exceeds_reservation.
  Errors (see the prelude): a bad argument, a broken account or reservation hash (or a reserved one
  whose account does not hold it), a catalog key that is not a hash, totals.revenue at its bound.
]]
OPS.recognize = {nkeys = 3, nargs = 4, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id, amount = id_arg(ARGV[a + 2], 'order_id'), ARGV[a + 3]
  local kopecks = amount_arg(amount, 'amount')
  local h = reservation(RESERVATION)
  if not h then
    return refuse('reservation_not_found')
  end
  local available, reserved = account(ACCOUNT)
  check_holds(RESERVATION, reserved, h)
  if h.status == 'recognized' and h.recognized_amount == amount then
    return unchanged_reservation(h, user_id, available, reserved)
  end
  if h.status ~= 'reserved' then
    return refuse('reservation_closed')
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
  h.status, h.recognized_amount, h.updated_at = 'recognized', amount, int(clock(PART))
  rcall('HSET', RESERVATION, 'status', h.status, 'recognized_amount', amount, 'updated_at', h.updated_at)
  local body = {reservation = reservation_body(h),
    balance = balance_body(user_id, available, reserved), transaction = charge}
  if release then
    body.release_transaction = release
  end
  return apply(body, txns)
end}
