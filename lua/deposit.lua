--[[
  deposit: credit a user's available balance; creates the account on its first credit.
    KEYS[k]    account hash of the user (available, reserved)
    ARGV[a]    user_id;  ARGV[a + 1] amount in kopecks (1 .. MAX_AMOUNT);  ARGV[a + 2] comment ('' = none)
  Outcomes: applied {balance, transaction}; refused balance_limit_exceeded.
  Errors (see the prelude): a bad argument, a broken account hash, totals.deposited at its bound.
]]
OPS.deposit = {nkeys = 1, nargs = 3, run = function(k, a)
  local ACCOUNT = KEYS[k]
  local user_id, amount, comment = id_arg(ARGV[a], 'user_id'), ARGV[a + 1], ARGV[a + 2]
  local kopecks = amount_arg(amount, 'amount')
  local available, reserved = account(ACCOUNT)
  local new = not available
  if new then
    available, reserved = 0, 0
  end
  if available + reserved + kopecks > MAX_BALANCE then
    return refuse('balance_limit_exceeded')
  end
  check_total(PART, 'deposited', kopecks)
  -- writes
  if new then
    rcall('HSET', ACCOUNT, 'reserved', '0')
  end
  available = rcall('HINCRBY', ACCOUNT, 'available', amount)
  add_total(PART, 'deposited', kopecks)
  local txn = new_txn(PART, 'deposit', user_id, amount, available, reserved, {comment = comment})
  return apply({balance = balance_after(txn), transaction = txn}, {txn})
end}
