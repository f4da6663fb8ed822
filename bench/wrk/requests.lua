-- Request generation shared by the wrk scripts: POST a deposit or GET a balance, for varying users.
-- Environment: BENCH_MODE (post|get|many), BENCH_POST_PATH, BENCH_GET_PATH (with %d for the user id),
-- BENCH_MANY_PATH and BENCH_MANY_IDS (many: GET the path followed by that many comma-separated user ids),
-- BENCH_TOKEN, BENCH_USERS (how many user ids to spread over), BENCH_RUN (makes keys unique per run).
local mode = os.getenv("BENCH_MODE") or "post"
local post_path = os.getenv("BENCH_POST_PATH") or "/v1/deposits"
local get_path = os.getenv("BENCH_GET_PATH") or "/v1/users/%d/balance"
local token = os.getenv("BENCH_TOKEN") or "bench-token"
local users = tonumber(os.getenv("BENCH_USERS") or "1000")
local many_path = os.getenv("BENCH_MANY_PATH") or "/v1/balances?user_ids="
local many_ids = tonumber(os.getenv("BENCH_MANY_IDS") or "100")
local run = os.getenv("BENCH_RUN") or tostring(os.time())

local counter = 0
local thread_id = "0"
local post_headers = {
  ["Authorization"] = "Bearer " .. token,
  ["Content-Type"] = "application/json",
}
local get_headers = { ["Authorization"] = "Bearer " .. token }

function set_thread_id(id)
  thread_id = tostring(id)
  math.randomseed(tonumber(id) * 7919 + os.time())
end

function next_request()
  counter = counter + 1
  local user = math.random(1, users)
  if mode == "get" then
    return wrk.format("GET", string.format(get_path, user), get_headers, nil)
  end
  if mode == "many" then
    local ids = { user }
    for i = 2, many_ids do
      ids[i] = math.random(1, users)
    end
    return wrk.format("GET", many_path .. table.concat(ids, ","), get_headers, nil)
  end
  post_headers["Idempotency-Key"] = run .. "-" .. thread_id .. "-" .. counter
  local body = '{"user_id": ' .. user .. ', "amount": "1.00", "comment": "bench"}'
  return wrk.format("POST", post_path, post_headers, body)
end
