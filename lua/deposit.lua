--[[
  deposit: credit a user's available balance; creates the account on its first credit.
    keys: account hash of the user (available, reserved)
    args: user_id, amount in kopecks, comment ('' = none)
  Outcomes: 201 {balance, transaction}; 409 balance_limit_exceeded.
]]
OPS.deposit = {nkeys = 1, nargs = 3, run = function(k, a)
  local ACCOUNT = KEYS[k]
  local user_id, amount, comment = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local available, reserved = account(ACCOUNT)
  if not available then
    available, reserved = 0, 0
    rcall('HSET', ACCOUNT, 'reserved', '0')
  end
  if available + reserved + tonumber(amount) > MAX_BALANCE then
    return refuse(409, 'balance_limit_exceeded')
  end
  available = rcall('HINCRBY', ACCOUNT, 'available', amount)
  add_total('deposited', amount)
  local txn = new_txn('deposit', user_id, amount, available, reserved, {comment = comment})
  return finish(201, {balance = balance_body(user_id, available, reserved), transaction = txn}, {txn})
end}
