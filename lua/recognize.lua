--[[
  recognize: take amount (<= the reservation) out of reserved as the service's revenue; return the
  remainder of the reservation to available (partial capture).
    keys: account hash, reservation hash, services catalog hash
    args: user_id, service_id, order_id, amount in kopecks
  Outcomes: 200 {reservation, balance, transaction (charge), release_transaction (when a remainder)};
            200 {reservation, balance} when already recognized with the same amount;
            404 reservation_not_found; 409 reservation_closed (cancelled, or recognized with another
            amount); 409 amount_exceeds_reservation.
]]
OPS.recognize = {nkeys = 3, nargs = 4, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local user_id, service_id, order_id, amount = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local r = rcall('HMGET', RESERVATION, 'amount', 'status', 'recognized_amount')
  local reserved_amount, status, recognized = r[1], r[2], r[3]
  if not reserved_amount then
    return refuse(404, 'reservation_not_found')
  end
  local available, reserved = account(ACCOUNT)
  if status == 'recognized' and recognized == amount then
    return unchanged_reservation(RESERVATION, user_id, available, reserved)
  end
  if status ~= 'reserved' then
    return refuse(409, 'reservation_closed')
  end
  if tonumber(amount) > tonumber(reserved_amount) then
    return refuse(409, 'amount_exceeds_reservation')
  end
  local remainder = tonumber(reserved_amount) - tonumber(amount)
  reserved = rcall('HINCRBY', ACCOUNT, 'reserved', '-' .. amount)
  add_total('revenue', amount)
  local name = rcall('HGET', SERVICES, service_id) or ''
  local refs = {service_id = service_id, order_id = order_id, service_name = name}
  local charge = new_txn('charge', user_id, amount, available, reserved, refs)
  local txns = {charge}
  local release = nil
  if remainder > 0 then
    reserved = rcall('HINCRBY', ACCOUNT, 'reserved', int(-remainder))
    available = rcall('HINCRBY', ACCOUNT, 'available', int(remainder))
    release = new_txn('release', user_id, int(remainder), available, reserved, refs)
    txns[2] = release
  end
  rcall('HSET', RESERVATION, 'status', 'recognized', 'recognized_amount', amount, 'updated_at', int(clock()))
  local body = {reservation = reservation_body(RESERVATION),
    balance = balance_body(user_id, available, reserved), transaction = charge}
  if release then
    body.release_transaction = release
  end
  return finish(200, body, txns)
end}
