--[[
  transfer: move money from one user's available balance to another's, both or neither.
    keys: sender account hash, recipient account hash (created on first credit)
    args: from_user_id, to_user_id, amount in kopecks, comment ('' = none)
  Outcomes: 201 {balance, transaction, recipient_balance, recipient_transaction};
            404 account_not_found (sender); 409 insufficient_funds; 409 balance_limit_exceeded (recipient).
]]
OPS.transfer = {nkeys = 2, nargs = 4, run = function(k, a)
  local FROM, TO = KEYS[k], KEYS[k + 1]
  local from_id, to_id, amount, comment = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local from_available, from_reserved = account(FROM)
  local status, code = debit_problem(from_available, amount)
  if status then
    return refuse(status, code)
  end
  local to_available, to_reserved = account(TO)
  if not to_available then
    to_available, to_reserved = 0, 0
  end
  if to_available + to_reserved + tonumber(amount) > MAX_BALANCE then
    return refuse(409, 'balance_limit_exceeded')
  end
  if to_available == 0 and to_reserved == 0 then
    rcall('HSETNX', TO, 'reserved', '0')
  end
  from_available = rcall('HINCRBY', FROM, 'available', '-' .. amount)
  to_available = rcall('HINCRBY', TO, 'available', amount)
  local out_txn = new_txn('transfer_out', from_id, amount, from_available, from_reserved,
    {comment = comment, counterparty_user_id = to_id})
  local in_txn = new_txn('transfer_in', to_id, amount, to_available, to_reserved,
    {comment = comment, counterparty_user_id = from_id})
  return finish(201, {
    balance = balance_body(from_id, from_available, from_reserved), transaction = out_txn,
    recipient_balance = balance_body(to_id, to_available, to_reserved), recipient_transaction = in_txn,
  }, {out_txn, in_txn})
end}
