--[[
  transfer_credit: the second step of a transfer between partitions, in the recipient's partition R, named
  by the transfer's id: credit the recipient once, or refuse when the recipient's balance would pass
  MAX_BALANCE. The marker records what happened, so running it again (a retry, the recovery loop, another
  worker) changes nothing and answers the same. It has no TTL while the transfer may still be settled
  (however long that takes, a later run must find it): billing/ledger/scripts.py gives it the idempotency
  TTL once the settle step has closed the transfer.
    KEYS[k]    recipient account hash (created on first credit);  KEYS[k + 1] R's credited marker of the
               transfer (string: this script's outcome JSON)
    ARGV[a]    transfer id;  ARGV[a + 1] from_user_id;  ARGV[a + 2] to_user_id;
    ARGV[a + 3] amount in kopecks (1 .. MAX_AMOUNT);  ARGV[a + 4] comment ('' = none)
  Outcomes (not under an Idempotency-Key: the transfer's own record is settled in S):
    new or replay {"result": "applied", "body": {recipient_balance, recipient_transaction}}
    new or replay {"result": "refused", "code": "balance_limit_exceeded"}
  Errors (see the prelude): a bad argument, a broken recipient account, totals transfers_in at its bound.
]]
OPS.transfer_credit = {nkeys = 2, nargs = 5, run = function(k, a)
  local TO, MARK = KEYS[k], KEYS[k + 1]
  local transfer_id = id_arg(ARGV[a], 'transfer id')
  local from_id, to_id = id_arg(ARGV[a + 1], 'from_user_id'), id_arg(ARGV[a + 2], 'to_user_id')
  local amount, comment = ARGV[a + 3], ARGV[a + 4]
  local kopecks = amount_arg(amount, 'amount')
  local done = rcall('GET', MARK)
  if done then
    return 'replay', done
  end
  local to_available, to_reserved = account(TO)
  local new = not to_available
  if new then
    to_available, to_reserved = 0, 0
  end
  local outcome
  if to_available + to_reserved + kopecks > MAX_BALANCE then
    outcome = cjson.encode({result = 'refused', code = 'balance_limit_exceeded'})
    rcall('SET', MARK, outcome)
    return 'new', outcome
  end
  check_total(PART, 'transfers_in', kopecks)
  -- writes
  if new then
    rcall('HSET', TO, 'reserved', '0')
  end
  to_available = rcall('HINCRBY', TO, 'available', amount)
  add_total(PART, 'transfers_in', kopecks)
  local in_txn = new_txn(PART, 'transfer_in', to_id, amount, to_available, to_reserved,
    {comment = comment, counterparty_user_id = from_id})
  in_txn.transfer_id = transfer_id
  append({in_txn})
  outcome = cjson.encode({result = 'applied', body = {
    recipient_balance = balance_body(to_id, to_available, to_reserved), recipient_transaction = in_txn}})
  rcall('SET', MARK, outcome)
  return 'new', outcome
end}
