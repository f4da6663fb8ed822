--[[
  cancel: return the whole reserved amount of a reservation to available.
    keys: account hash, reservation hash, services catalog hash
    args: user_id, service_id, order_id, comment ('' = none)
  Outcomes: 200 {reservation, balance, transaction (release)}; 200 {reservation, balance} when already
            cancelled; 404 reservation_not_found; 409 reservation_closed (recognized).
]]
OPS.cancel = {nkeys = 3, nargs = 4, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local user_id, service_id, order_id, comment = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local r = rcall('HMGET', RESERVATION, 'amount', 'status')
  local amount, status = r[1], r[2]
  if not amount then
    return refuse(404, 'reservation_not_found')
  end
  local available, reserved = account(ACCOUNT)
  if status == 'cancelled' then
    return unchanged_reservation(RESERVATION, user_id, available, reserved)
  end
  if status ~= 'reserved' then
    return refuse(409, 'reservation_closed')
  end
  reserved = rcall('HINCRBY', ACCOUNT, 'reserved', '-' .. amount)
  available = rcall('HINCRBY', ACCOUNT, 'available', amount)
  rcall('HSET', RESERVATION, 'status', 'cancelled', 'updated_at', int(clock()))
  local release = new_txn('release', user_id, amount, available, reserved, {
    comment = comment, service_id = service_id, order_id = order_id,
    service_name = rcall('HGET', SERVICES, service_id) or ''})
  return finish(200, {reservation = reservation_body(RESERVATION),
    balance = balance_body(user_id, available, reserved), transaction = release}, {release})
end}
