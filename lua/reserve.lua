--[[
  reserve: move amount from available to reserved for (user, service, order) until a deadline; once per
  order, ever (while its closed record lasts: recognize, cancel and expire give it a TTL).
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] the partition's services catalog hash;
    KEYS[k + 3] the partition's expiry index (sorted set: member user:service:order, score expires_at in ms)
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;
    ARGV[a + 3] amount in kopecks (1 .. MAX_AMOUNT);
    ARGV[a + 4] service_name ('' = keep the catalog as is);  ARGV[a + 5] comment ('' = none);
    ARGV[a + 6] expires_in: seconds from now to the deadline (expires_at), 1 .. MAX_EXPIRES_IN;
    ARGV[a + 7] closed-record TTL in seconds (of a reservation this call finds past its deadline)
  Outcomes: applied {reservation, balance, transaction}; unchanged {reservation, balance} when the
            same reservation exists with the same amount (any status); refused reservation_conflict (another
            amount), account_not_found, insufficient_funds. An existing reservation past its deadline and
            still reserved is released first (a release transaction, status expired), whatever the outcome.
  Errors (see the prelude): a bad argument, a broken account or reservation hash, a catalog key that is
  not a hash, an expiry index that is not a sorted set.
]]
OPS.reserve = {nkeys = 4, nargs = 8, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES, INDEX = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id, amount = id_arg(ARGV[a + 2], 'order_id'), ARGV[a + 3]
  local service_name, comment = ARGV[a + 4], ARGV[a + 5]
  local expires_in = checked_int(ARGV[a + 6], MAX_EXPIRES_IN, 'expires_in')
  if not expires_in or expires_in < 1 then
    fail('expires_in must be 1 .. ' .. int(MAX_EXPIRES_IN) .. ' seconds: ' .. tostring(ARGV[a + 6]))
  end
  local closed_ttl = ttl_arg(ARGV[a + 7], 'closed-record TTL')
  local kopecks = amount_arg(amount, 'amount')
  check_type(INDEX, 'zset')
  local available, reserved = account(ACCOUNT)
  local existing = reservation(RESERVATION)
  if existing then
    check_holds(RESERVATION, reserved, existing)
    local code = existing.amount ~= amount and 'reservation_conflict' or nil
    if due(existing) then
      return expired_outcome(ACCOUNT, RESERVATION, INDEX, existing, SERVICES, closed_ttl, code)
    end
    if code then
      return refuse(code)
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
  local at = clock(PART)
  local h = {user_id = user_id, service_id = service_id, order_id = order_id, amount = amount,
    status = 'reserved', created_at = int(at), updated_at = int(at), expires_at = int(at + expires_in * 1000)}
  write_reservation(RESERVATION, h)
  rcall('ZADD', INDEX, h.expires_at, expiry_member(h))
  local services = nil
  if service_name ~= '' and catalog_name ~= service_name then
    rcall('HSET', SERVICES, service_id, service_name, 'at:' .. service_id, h.created_at)
    services = {[service_id] = service_name}
    catalog_name = service_name
  end
  local txn = new_txn(PART, 'reserve', user_id, amount, available, reserved, {
    comment = comment, service_id = service_id, order_id = order_id, service_name = catalog_name or '',
    expires_at = h.expires_at})
  return apply({reservation = reservation_body(h),
    balance = balance_after(txn), transaction = txn}, {txn}, services)
end}
