--[[
  reserve: move amount from available to reserved for (user, service, order); once per order, ever.
    keys: account hash, reservation hash, services catalog hash (service_id -> name)
    args: user_id, service_id, order_id, amount in kopecks, service_name ('' = keep the catalog as is),
          comment ('' = none)
  Outcomes: 201 {reservation, balance, transaction}; 200 {reservation, balance} when the same
            reservation exists with the same amount (any status); 409 reservation_conflict (another
            amount); 404 account_not_found; 409 insufficient_funds.
]]
OPS.reserve = {nkeys = 3, nargs = 6, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local user_id, service_id, order_id, amount = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local service_name, comment = ARGV[a + 4], ARGV[a + 5]
  local available, reserved = account(ACCOUNT)
  local existing = rcall('HGET', RESERVATION, 'amount')
  if existing then
    if existing ~= amount then
      return refuse(409, 'reservation_conflict')
    end
    return unchanged_reservation(RESERVATION, user_id, available, reserved)
  end
  local status, code = debit_problem(available, amount)
  if status then
    return refuse(status, code)
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
end}
