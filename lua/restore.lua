--[[
  restore: what `billing rebuild` (billing/projection/recovery.py) derived from the MongoDB ledger, written in
  this ledger's layout and within its bounds, one record per call (the body of a function):
    ARGV[1] 'account'      KEYS[1] account hash;      ARGV[2] available;  ARGV[3] reserved
    ARGV[1] 'reservation'  KEYS[1] reservation hash;  KEYS[2] its partition's expiry index;  ARGV[2..12] user_id,
                           service_id, order_id, amount, status, recognized_amount ('' = none), created_at,
                           updated_at, expires_at ('' = none; a reserved one goes into the index with it),
                           the record's TTL in seconds ('' = none), refunded_amount ('' = none)
    ARGV[1] 'totals'       KEYS[1] a partition's totals hash;  ARGV[2..8] the prelude's TOTAL_FIELDS in
                           order (deposited, withdrawn, revenue, transfers_in, transfers_out,
                           transfers_reversed, refunded)
    ARGV[1] 'services'     KEYS[1] a partition's catalog hash;  ARGV[2..] service_id, name, service_id, name, ...
                           (each named at 0: any later name wins)
    ARGV[1] 'transit'      KEYS[1] a partition's transits hash;  ARGV[2] transfer id;  ARGV[3] the transit JSON
                           (as lua/transfer_debit.lua writes it)
    ARGV[1] 'meta'         KEYS[1] a partition's meta hash;  ARGV[2] seq;  ARGV[3] clock: each raised to the
                           value, never lowered (ids and times go on from the partition's last ones);
                           returns {seq, clock}
  Errors (see the prelude): a value out of its bound, a key of another type; raised before the write.
]]
local what, KEY = ARGV[1], KEYS[1]
if what == 'account' then
  check_type(KEY, 'hash')
  local available = checked_int(ARGV[2] or '', MAX_BALANCE, 'available')
  local reserved = checked_int(ARGV[3] or '', MAX_BALANCE, 'reserved')
  if available < 0 or reserved < 0 or available + reserved > MAX_BALANCE then
    fail(KEY .. ' would not hold ' .. ARGV[2] .. ' + ' .. ARGV[3])
  end
  rcall('HSET', KEY, 'available', ARGV[2], 'reserved', ARGV[3])
  return 1
end
if what == 'reservation' then
  check_type(KEY, 'hash')
  local h = {user_id = id_arg(ARGV[2], 'user_id'), service_id = id_arg(ARGV[3], 'service_id'),
    order_id = id_arg(ARGV[4], 'order_id'), amount = ARGV[5], status = ARGV[6], created_at = ARGV[8],
    updated_at = ARGV[9]}
  amount_arg(h.amount, 'amount')
  if not RESERVATION_STATUSES[h.status] then
    fail('unknown reservation status: ' .. tostring(h.status))
  end
  if ARGV[7] ~= '' then
    amount_arg(ARGV[7], 'recognized_amount')
    h.recognized_amount = ARGV[7]
  end
  if (ARGV[12] or '') ~= '' then
    if not h.recognized_amount or amount_arg(ARGV[12], 'refunded_amount') > tonumber(h.recognized_amount) then
      fail('refunded_amount ' .. ARGV[12] .. ' is not within the recognized amount')
    end
    h.refunded_amount = ARGV[12]
  end
  checked_int(h.created_at or '', MAX_TIME, 'created_at')
  checked_int(h.updated_at or '', MAX_TIME, 'updated_at')
  if ARGV[10] ~= '' then
    checked_int(ARGV[10], MAX_TIME, 'expires_at')
    h.expires_at = ARGV[10]
  end
  local ttl = ARGV[11] ~= '' and ttl_arg(ARGV[11], 'TTL') or nil
  check_type(KEYS[2], 'zset')
  write_reservation(KEY, h)
  if h.status == 'reserved' and h.expires_at then
    rcall('ZADD', KEYS[2], h.expires_at, expiry_member(h))
  end
  if ttl then
    rcall('EXPIRE', KEY, ttl)
  end
  return 1
end
if what == 'totals' then
  check_type(KEY, 'hash')
  local fields = {}
  for i, field in ipairs(TOTAL_FIELDS) do
    checked_int(ARGV[i + 1] or '', MAX_TOTAL, field)
    fields[#fields + 1] = field
    fields[#fields + 1] = ARGV[i + 1]
  end
  rcall('HSET', KEY, unpack(fields))
  return 1
end
if what == 'services' then
  check_type(KEY, 'hash')
  for i = 2, #ARGV, 2 do
    id_arg(ARGV[i], 'service_id')
    if not ARGV[i + 1] then
      fail('service ' .. ARGV[i] .. ' has no name')
    end
  end
  local fields = {}
  for i = 2, #ARGV, 2 do
    fields[#fields + 1], fields[#fields + 2], fields[#fields + 3], fields[#fields + 4] =
      ARGV[i], ARGV[i + 1], 'at:' .. ARGV[i], '0'
  end
  if #fields > 0 then
    rcall('HSET', KEY, unpack(fields))
  end
  return 1
end
if what == 'transit' then
  check_type(KEY, 'hash')
  local transfer_id = id_arg(ARGV[2], 'transfer id')
  local ok, transit = pcall(cjson.decode, ARGV[3] or '')
  if not ok or type(transit) ~= 'table' or type(transit.transfer) ~= 'table' or transit.transfer.id ~= transfer_id then
    fail('not a transit of transfer ' .. transfer_id)
  end
  amount_arg(transit.transfer.amount, 'transit amount')
  rcall('HSET', KEY, transfer_id, ARGV[3])
  return 1
end
if what == 'meta' then
  check_type(KEY, 'hash')
  local meta = rcall('HMGET', KEY, 'seq', 'clock')
  local seq = math.max(checked_int(ARGV[2] or '', MAX_SEQ - RUN_IDS, 'seq'),
    checked_int(meta[1], MAX_SEQ - RUN_IDS, 'stored seq') or 0)
  local clock = math.max(
    checked_int(ARGV[3] or '', MAX_TIME, 'clock'), checked_int(meta[2], MAX_TIME, 'stored clock') or 0)
  rcall('HSET', KEY, 'seq', int(seq), 'clock', int(clock))
  return {int(seq), int(clock)}
end
fail('restore: unknown record ' .. tostring(what))
