--[[
  cancel: return the whole reserved amount of a reservation to available.
    KEYS[5] account hash   KEYS[6] reservation hash   KEYS[7] services catalog hash
    ARGV[3] user_id   ARGV[4] service_id   ARGV[5] order_id   ARGV[6] comment ('' = none)
  Outcomes: 200 {reservation, balance, transaction (release)}; 200 {reservation, balance} when already
            cancelled; 404 reservation_not_found; 409 reservation_closed (recognized).
]]
local ACCOUNT, RESERVATION, SERVICES = KEYS[5], KEYS[6], KEYS[7]
local user_id, service_id, order_id, comment = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local r = rcall('HMGET', RESERVATION, 'amount', 'status')
local amount, status = r[1], r[2]
if not amount then
  return refuse(404, 'reservation_not_found')
end
local available, reserved = account(ACCOUNT)
if status == 'cancelled' then
  return finish(200, {reservation = reservation_body(RESERVATION),
    balance = balance_body(user_id, available, reserved)})
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
