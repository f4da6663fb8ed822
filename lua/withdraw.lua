--[[
  withdraw: debit a user's available balance.
    KEYS[5] account hash of the user
    ARGV[3] user_id   ARGV[4] amount in kopecks   ARGV[5] comment ('' = none)
  Outcomes: 201 {balance, transaction}; 404 account_not_found; 409 insufficient_funds.
]]
local ACCOUNT = KEYS[5]
local user_id, amount, comment = ARGV[3], ARGV[4], ARGV[5]
local available, reserved = account(ACCOUNT)
if not available then
  return refuse(404, 'account_not_found')
end
if available < tonumber(amount) then
  return refuse(409, 'insufficient_funds')
end
available = rcall('HINCRBY', ACCOUNT, 'available', '-' .. amount)
rcall('HINCRBY', TOTALS_KEY, 'withdrawn', amount)
local txn = new_txn('withdrawal', user_id, amount, available, reserved, {comment = comment})
return finish(201, {balance = balance_body(user_id, available, reserved), transaction = txn}, {txn})
