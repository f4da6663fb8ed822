--[[
  set_service: name a service in the catalog (used by history descriptions and the revenue report).
    KEYS[5] services catalog hash (service_id -> name)
    ARGV[3] service_id   ARGV[4] name
  Outcomes: 200 {service_id, name}; the outbox gets the change when the name is new.
]]
local SERVICES = KEYS[5]
local service_id, name = ARGV[3], ARGV[4]
local services = nil
if rcall('HGET', SERVICES, service_id) ~= name then
  rcall('HSET', SERVICES, service_id, name)
  services = {[service_id] = name}
end
return finish(200, {service_id = service_id, name = name}, nil, services)
