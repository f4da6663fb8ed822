--[[
  transfer: move money from one user's available balance to another's, both or neither. Each side's
  transaction takes its id from, and goes to the outbox of, the partition of its user (the recipient's may
  be another than the run's, the sender's), and each partition's totals count the kopecks that left and
  entered its accounts (transfers_out, transfers_in; a transfer within one partition counts in both, so
  `billing reconcile` derives them from the ledger's sums per user).
    KEYS[k]    sender account hash;  KEYS[k + 1] recipient account hash (created on first credit);
    KEYS[k + 2], KEYS[k + 3], KEYS[k + 4] the recipient partition's outbox, meta and totals (the run's own
               keys when it is the same partition)
    ARGV[a]    from_user_id;  ARGV[a + 1] to_user_id;  ARGV[a + 2] amount in kopecks (1 .. MAX_AMOUNT);
    ARGV[a + 3] comment ('' = none);  ARGV[a + 4] the recipient's partition number
  Outcomes: applied {balance, transaction, recipient_balance, recipient_transaction};
            refused account_not_found (sender), insufficient_funds, balance_limit_exceeded (recipient).
  Errors (see the prelude): a bad argument, a broken account hash (either one), a broken meta or totals of
  the recipient's partition, totals transfers_out or transfers_in at its bound.
]]
OPS.transfer = {nkeys = 5, nargs = 5, run = function(k, a)
  local FROM, TO = KEYS[k], KEYS[k + 1]
  local from_id, to_id = id_arg(ARGV[a], 'from_user_id'), id_arg(ARGV[a + 1], 'to_user_id')
  local amount, comment = ARGV[a + 2], ARGV[a + 3]
  local kopecks = amount_arg(amount, 'amount')
  local to_part = partition(ARGV[a + 4], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4])
  local from_available, from_reserved = account(FROM)
  local to_available, to_reserved = account(TO) -- read (and checked) even when the sender is refused
  local code = debit_problem(from_available, kopecks)
  if code then
    return refuse(code)
  end
  local new = not to_available
  if new then
    to_available, to_reserved = 0, 0
  end
  if to_available + to_reserved + kopecks > MAX_BALANCE then
    return refuse('balance_limit_exceeded')
  end
  check_total(PART, 'transfers_out', kopecks)
  check_total(to_part, 'transfers_in', kopecks)
  -- writes
  if new then
    rcall('HSET', TO, 'reserved', '0')
  end
  from_available = rcall('HINCRBY', FROM, 'available', '-' .. amount)
  to_available = rcall('HINCRBY', TO, 'available', amount)
  add_total(PART, 'transfers_out', kopecks)
  add_total(to_part, 'transfers_in', kopecks)
  local out_txn = new_txn(PART, 'transfer_out', from_id, amount, from_available, from_reserved,
    {comment = comment, counterparty_user_id = to_id})
  local in_txn = new_txn(to_part, 'transfer_in', to_id, amount, to_available, to_reserved,
    {comment = comment, counterparty_user_id = from_id})
  return apply({
    balance = balance_after(out_txn), transaction = out_txn,
    recipient_balance = balance_after(in_txn), recipient_transaction = in_txn,
  }, {out_txn, in_txn})
end}
