--[[
  withdraw: debit a user's available balance.
    KEYS[k]    account hash of the user
    ARGV[a]    user_id;  ARGV[a + 1] amount in kopecks (1 .. MAX_AMOUNT);  ARGV[a + 2] comment ('' = none)
  Outcomes: applied {balance, transaction}; refused account_not_found; refused insufficient_funds.
  Errors (see the prelude): a bad argument, a broken account hash, totals.withdrawn at its bound.
]]
OPS.withdraw = {nkeys = 1, nargs = 3, run = function(k, a)
  local ACCOUNT = KEYS[k]
  local user_id, amount, comment = id_arg(ARGV[a], 'user_id'), ARGV[a + 1], ARGV[a + 2]
  local kopecks = amount_arg(amount, 'amount')
  local available, reserved = account(ACCOUNT)
  local code = debit_problem(available, kopecks)
  if code then
    return refuse(code)
  end
  check_total(PART, 'withdrawn', kopecks)
  -- writes
  available = rcall('HINCRBY', ACCOUNT, 'available', '-' .. amount)
  add_total(PART, 'withdrawn', kopecks)
  local txn = new_txn(PART, 'withdrawal', user_id, amount, available, reserved, {comment = comment})
  return apply({balance = balance_after(txn), transaction = txn}, {txn})
end}
