--[[
  transfer_debit: the first step of a transfer between users of two partitions, in the sender's partition S:
  take the money out of the sender's available balance and hold it in transit until the recipient's
  partition credits it (lua/transfer_credit.lua) and S settles it (lua/transfer_settle.lua). The transfer's
  id is its transfer_out transaction's id.
    KEYS[k]    sender account hash;  KEYS[k + 1] S's transits hash (transfer id -> transit JSON)
    ARGV[a]    from_user_id;  ARGV[a + 1] to_user_id;  ARGV[a + 2] amount in kopecks (1 .. MAX_AMOUNT);
    ARGV[a + 3] comment ('' = none);  ARGV[a + 4] the recipient's partition number (not the run's)
  The transit JSON: {transfer = {id, from_user_id, to_user_id, amount, comment, from_partition,
  to_partition, created_at}, record (the idempotency record's key, '' = none), fingerprint, lang, balance
  (the sender's after the debit), transaction (the transfer_out record)}.
  Outcomes: pending {transfer} (recorded under the Idempotency-Key until the settlement replaces it);
            refused account_not_found (sender), insufficient_funds.
  Errors (see the prelude): a bad argument, a broken sender account, a transits key that is not a hash,
  totals transfers_out at its bound.
]]
OPS.transfer_debit = {nkeys = 2, nargs = 5, run = function(k, a)
  local FROM, TRANSITS = KEYS[k], KEYS[k + 1]
  local from_id, to_id = id_arg(ARGV[a], 'from_user_id'), id_arg(ARGV[a + 1], 'to_user_id')
  local amount, comment = ARGV[a + 2], ARGV[a + 3]
  local kopecks = amount_arg(amount, 'amount')
  local to_part = checked_int(ARGV[a + 4], ID_SPAN - 1, 'recipient partition')
  if to_part < 0 or to_part == PART.number then
    fail('a transfer in transit goes to another partition: ' .. ARGV[a + 4])
  end
  check_type(TRANSITS, 'hash')
  local from_available, from_reserved = account(FROM)
  local code = debit_problem(from_available, kopecks)
  if code then
    return refuse(code)
  end
  check_total(PART, 'transfers_out', kopecks)
  -- writes
  from_available = rcall('HINCRBY', FROM, 'available', '-' .. amount)
  add_total(PART, 'transfers_out', kopecks)
  local out_txn = new_txn(PART, 'transfer_out', from_id, amount, from_available, from_reserved,
    {comment = comment, counterparty_user_id = to_id})
  out_txn.transfer_id = out_txn.id -- marks a transfer between partitions: its credit or reversal names it
  local transfer = {id = out_txn.id, from_user_id = from_id, to_user_id = to_id, amount = amount,
    comment = comment, from_partition = int(PART.number), to_partition = int(to_part),
    created_at = out_txn.created_at}
  local record_key = FINGERPRINT ~= '' and IDEM_KEY or ''
  rcall('HSET', TRANSITS, out_txn.id, cjson.encode({transfer = transfer, record = record_key,
    fingerprint = FINGERPRINT, lang = LANG, balance = balance_body(from_id, from_available, from_reserved),
    transaction = out_txn}))
  append({out_txn})
  return record({result = 'pending', transfer = transfer})
end}
