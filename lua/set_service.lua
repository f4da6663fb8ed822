--[[
  set_service: name a service in the partition's catalog (billing/ledger/scripts.py Ledger.set_service runs
  it in every partition; used by history descriptions and the revenue report).
    KEYS[k]    the partition's services catalog hash (service_id -> name, at:<service_id> -> when named)
    ARGV[a]    service_id;  ARGV[a + 1] name
  Outcomes: applied {service_id, name} (the partition's outbox gets the change) when the name is new to the
            partition, else unchanged.
  Errors (see the prelude): a bad service_id, a catalog key that is not a hash.
]]
OPS.set_service = {nkeys = 1, nargs = 2, run = function(k, a)
  local SERVICES = KEYS[k]
  local service_id, name = id_arg(ARGV[a], 'service_id'), ARGV[a + 1]
  local body = {service_id = service_id, name = name}
  if rcall('HGET', SERVICES, service_id) == name then
    return unchanged(body)
  end
  -- writes
  rcall('HSET', SERVICES, service_id, name, 'at:' .. service_id, clock_text(PART))
  return apply(body, nil, {[service_id] = name})
end}
