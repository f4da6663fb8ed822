--[[
  withdraw: debit a user's available balance.
    keys: account hash of the user
    args: user_id, amount in kopecks, comment ('' = none)
  Outcomes: 201 {balance, transaction}; 404 account_not_found; 409 insufficient_funds.
]]
OPS.withdraw = {nkeys = 1, nargs = 3, run = function(k, a)
  local ACCOUNT = KEYS[k]
  local user_id, amount, comment = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local available, reserved = account(ACCOUNT)
  local status, code = debit_problem(available, amount)
  if status then
    return refuse(status, code)
  end
  available = rcall('HINCRBY', ACCOUNT, 'available', '-' .. amount)
  add_total('withdrawn', amount)
  local txn = new_txn('withdrawal', user_id, amount, available, reserved, {comment = comment})
  return finish(201, {balance = balance_body(user_id, available, reserved), transaction = txn}, {txn})
end}
