--[[
  reserve: move amount from available to reserved for (user, service, order); once per order, ever.
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] the partition's services catalog hash
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;
    ARGV[a + 3] amount in kopecks (1 .. MAX_AMOUNT);
    ARGV[a + 4] service_name ('' = keep the catalog as is);  ARGV[a + 5] comment ('' = none)
  Outcomes: applied {reservation, balance, transaction}; unchanged {reservation, balance} when the
            same reservation exists with the same amount (any status); refused reservation_conflict (another
            amount), account_not_found, insufficient_funds.
  Errors (see the prelude): a bad argument, a broken account or reservation hash, a catalog key that is
  not a hash.
]]
OPS.reserve = {nkeys = 3, nargs = 6, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id, amount = id_arg(ARGV[a + 2], 'order_id'), ARGV[a + 3]
  local service_name, comment = ARGV[a + 4], ARGV[a + 5]
  local kopecks = amount_arg(amount, 'amount')
  local available, reserved = account(ACCOUNT)
  local existing = reservation(RESERVATION)
  if existing then
    check_holds(RESERVATION, reserved, existing)
    if existing.amount ~= amount then
      return refuse('reservation_conflict')
    end
    return unchanged_reservation(existing, user_id, available, reserved)
  end
  local code = debit_problem(available, kopecks)
  if code then
    return refuse(code)
  end
  local catalog_name = rcall('HGET', SERVICES, service_id)
  -- writes
  available = rcall('HINCRBY', ACCOUNT, 'available', '-' .. amount)
  reserved = rcall('HINCRBY', ACCOUNT, 'reserved', amount)
  local now = int(clock(PART))
  local h = {user_id = user_id, service_id = service_id, order_id = order_id, amount = amount,
    status = 'reserved', created_at = now, updated_at = now}
  write_reservation(RESERVATION, h)
  local services = nil
  if service_name ~= '' and catalog_name ~= service_name then
    rcall('HSET', SERVICES, service_id, service_name, 'at:' .. service_id, now)
    services = {[service_id] = service_name}
    catalog_name = service_name
  end
  local txn = new_txn(PART, 'reserve', user_id, amount, available, reserved, {
    comment = comment, service_id = service_id, order_id = order_id, service_name = catalog_name or ''})
  return apply({reservation = reservation_body(h),
    balance = balance_body(user_id, available, reserved), transaction = txn}, {txn}, services)
end}
