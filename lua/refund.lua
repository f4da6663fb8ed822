--[[
  refund: give part or all of a recognized reservation's charge back to the user's available balance; several
  partial refunds may follow one another while their sum stays within the recognized amount.
    KEYS[k]    account hash;  KEYS[k + 1] reservation hash;  KEYS[k + 2] services catalog hash
    ARGV[a]    user_id;  ARGV[a + 1] service_id;  ARGV[a + 2] order_id;
    ARGV[a + 3] amount in kopecks (1 .. MAX_AMOUNT);  ARGV[a + 4] comment ('' = none)
  Outcomes: applied {reservation (its refunded_amount raised by amount), balance, transaction (refund)};
            refused reservation_not_found, reservation_not_recognized (reserved, cancelled or any other
            status), refund_exceeds_charge (refunded_amount + amount > recognized_amount),
            balance_limit_exceeded (the account's available + reserved would pass MAX_BALANCE).
  Every refund applies anew: a retry is made safe by its Idempotency-Key, as for a deposit.
  Errors (see the prelude): a bad argument, a broken account or reservation hash (or a recognized one whose
  account does not exist), a catalog key that is not a hash, totals.refunded at its bound.
]]
OPS.refund = {nkeys = 3, nargs = 5, run = function(k, a)
  local ACCOUNT, RESERVATION, SERVICES = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local user_id, service_id = id_arg(ARGV[a], 'user_id'), id_arg(ARGV[a + 1], 'service_id')
  local order_id, amount, comment = id_arg(ARGV[a + 2], 'order_id'), ARGV[a + 3], ARGV[a + 4]
  local kopecks = amount_arg(amount, 'amount')
  local h, available, reserved = held_reservation(RESERVATION, ACCOUNT)
  if not h then
    return refuse('reservation_not_found')
  end
  if h.status ~= 'recognized' then
    return refuse('reservation_not_recognized')
  end
  if not available then
    fail(RESERVATION .. ' is recognized but its account ' .. ACCOUNT .. ' does not exist')
  end
  -- both within MAX_AMOUNT (reservation() checked them): the sum is exact
  local refunded = tonumber(h.refunded_amount or '0') + kopecks
  if refunded > tonumber(h.recognized_amount) then
    return refuse('refund_exceeds_charge')
  end
  if available + reserved + kopecks > MAX_BALANCE then
    return refuse('balance_limit_exceeded')
  end
  check_total(PART, 'refunded', kopecks)
  local name = rcall('HGET', SERVICES, service_id) or ''
  -- writes
  available = rcall('HINCRBY', ACCOUNT, 'available', amount)
  add_total(PART, 'refunded', kopecks)
  h.refunded_amount, h.updated_at = int(refunded), clock_text(PART)
  rcall('HSET', RESERVATION, 'refunded_amount', h.refunded_amount, 'updated_at', h.updated_at)
  local txn = new_txn(PART, 'refund', user_id, amount, available, reserved, {
    comment = comment, service_id = service_id, order_id = order_id, service_name = name})
  return apply({reservation = reservation_body(h),
    balance = balance_after(txn), transaction = txn}, {txn})
end}
