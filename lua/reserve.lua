--[[
  reserve: move amount from available to reserved for (user, service, order); once per order, ever.
    KEYS[5] account hash   KEYS[6] reservation hash   KEYS[7] services catalog hash (service_id -> name)
    ARGV[3] user_id   ARGV[4] service_id   ARGV[5] order_id   ARGV[6] amount in kopecks
    ARGV[7] service_name ('' = keep the catalog as is)   ARGV[8] comment ('' = none)
  Outcomes: 201 {reservation, balance, transaction}; 200 {reservation, balance} when the same
            reservation exists with the same amount (any status); 409 reservation_conflict (another
            amount); 404 account_not_found; 409 insufficient_funds.
]]
local ACCOUNT, RESERVATION, SERVICES = KEYS[5], KEYS[6], KEYS[7]
local user_id, service_id, order_id, amount = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local service_name, comment = ARGV[7], ARGV[8]
local available, reserved = account(ACCOUNT)
local existing = rcall('HGET', RESERVATION, 'amount')
if existing then
  if existing ~= amount then
    return refuse(409, 'reservation_conflict')
  end
  return finish(200, {reservation = reservation_body(RESERVATION),
    balance = balance_body(user_id, available or 0, reserved or 0)})
end
if not available then
  return refuse(404, 'account_not_found')
end
if available < tonumber(amount) then
  return refuse(409, 'insufficient_funds')
end
available = rcall('HINCRBY', ACCOUNT, 'available', '-' .. amount)
reserved = rcall('HINCRBY', ACCOUNT, 'reserved', amount)
local now = int(clock())
rcall('HSET', RESERVATION, 'user_id', user_id, 'service_id', service_id, 'order_id', order_id,
  'amount', amount, 'status', 'reserved', 'created_at', now, 'updated_at', now)
local services = nil
if service_name ~= '' and rcall('HGET', SERVICES, service_id) ~= service_name then
  rcall('HSET', SERVICES, service_id, service_name)
  services = {[service_id] = service_name}
end
local txn = new_txn('reserve', user_id, amount, available, reserved, {
  comment = comment, service_id = service_id, order_id = order_id,
  service_name = rcall('HGET', SERVICES, service_id) or ''})
return finish(201, {reservation = reservation_body(RESERVATION),
  balance = balance_body(user_id, available, reserved), transaction = txn}, {txn}, services)
