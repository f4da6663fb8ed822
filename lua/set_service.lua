--[[
  set_service: name a service in the catalog (used by history descriptions and the revenue report).
    KEYS[k]    services catalog hash (service_id -> name)
    ARGV[a]    service_id;  ARGV[a + 1] name
  Outcomes: applied {service_id, name} (the outbox gets the change) when the name is new, else unchanged.
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
  rcall('HSET', SERVICES, service_id, name)
  return apply(body, nil, {[service_id] = name})
end}
