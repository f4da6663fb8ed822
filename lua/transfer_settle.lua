--[[
  transfer_settle: the last step of a transfer between partitions, in the sender's partition S: given what
  the credit came to (lua/transfer_credit.lua), write the transfer's final outcome and close its transit.
  Credited: the outcome is applied, with the same body as a transfer within one partition. Refused: the
  debit is reversed (a transfer_reversal transaction gives the sender the amount back; totals
  transfers_reversed) and the outcome is refused balance_limit_exceeded. The final outcome replaces the
  pending one under the transfer's Idempotency-Key and stays in S's settled marker, so settling again
  changes nothing and answers the same.
    KEYS[k]    S's transits hash;  KEYS[k + 1] S's settled marker of the transfer (string: the final outcome)
    KEYS[k + 2] sender account hash;  KEYS[k + 3] the idempotency record the transit names (any key of S
               when it names none)
    ARGV[a]    transfer id;  ARGV[a + 1] the credit's outcome JSON
  Outcomes: new or replay: the transfer's final outcome (applied, or refused balance_limit_exceeded).
  Errors (see the prelude): a transfer neither in transit nor settled, a transit that is not what
  lua/transfer_debit.lua writes or names another record, a credit outcome that is neither, a broken sender
  account, totals transfers_reversed at its bound.
]]
OPS.transfer_settle = {nkeys = 4, nargs = 2, run = function(k, a)
  local TRANSITS, SETTLED, FROM, RECORD = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local transfer_id = id_arg(ARGV[a], 'transfer id')
  local done = rcall('GET', SETTLED)
  if done then
    return 'replay', done
  end
  local raw = rcall('HGET', TRANSITS, transfer_id)
  if not raw then
    fail('transfer ' .. transfer_id .. ' is neither in transit nor settled')
  end
  local ok, transit = pcall(cjson.decode, raw)
  if not ok or type(transit) ~= 'table' or type(transit.transfer) ~= 'table'
      or transit.transfer.id ~= transfer_id or type(transit.record) ~= 'string' then
    fail(TRANSITS .. ' ' .. transfer_id .. ' is not a transit')
  end
  if transit.record ~= '' and transit.record ~= RECORD then
    fail('transfer ' .. transfer_id .. ' is recorded under ' .. transit.record .. ', not ' .. RECORD)
  end
  local credited
  ok, credited = pcall(cjson.decode, ARGV[a + 1])
  if not ok or type(credited) ~= 'table' or not ((credited.result == 'applied' and type(credited.body) == 'table')
      or (credited.result == 'refused' and credited.code == 'balance_limit_exceeded')) then
    fail('not the outcome of a credit: ' .. tostring(ARGV[a + 1]))
  end
  local t = transit.transfer
  local outcome
  if credited.result == 'applied' then
    outcome = {result = 'applied', body = {balance = transit.balance, transaction = transit.transaction,
      recipient_balance = credited.body.recipient_balance,
      recipient_transaction = credited.body.recipient_transaction}}
  else
    local kopecks = amount_arg(t.amount, 'transit amount')
    local available, reserved = account(FROM)
    if not available then
      fail(FROM .. ' does not exist: it was debited')
    end
    check_total(PART, 'transfers_reversed', kopecks)
    -- writes
    available = rcall('HINCRBY', FROM, 'available', t.amount)
    add_total(PART, 'transfers_reversed', kopecks)
    local txn = new_txn(PART, 'transfer_reversal', t.from_user_id, t.amount, available, reserved,
      {comment = t.comment, counterparty_user_id = t.to_user_id})
    txn.transfer_id = transfer_id
    append({txn})
    outcome = {result = 'refused', code = credited.code}
  end
  -- writes
  if transit.lang ~= '' then
    outcome.lang = transit.lang
  end
  local payload = cjson.encode(outcome)
  if transit.record ~= '' then
    rcall('SET', RECORD, transit.fingerprint .. '\n' .. payload, 'EX', IDEM_TTL)
  end
  rcall('SET', SETTLED, payload, 'EX', IDEM_TTL)
  rcall('HDEL', TRANSITS, transfer_id)
  return 'new', payload
end}
