-- Closed-loop load for wrk: 70 % POST /jobs, 30 % GET /jobs/{id} of jobs this thread submitted.
-- `done` prints one JSON line that bench/load.py reads.

local ids = {}
local body = '{"name":"TestUser","email":"test@mail.com","password":"pass"}'
local post_headers = { ["Content-Type"] = "application/json" }

request = function()
  if #ids > 0 and math.random() < 0.3 then
    return wrk.format("GET", "/jobs/" .. ids[math.random(#ids)])
  end
  return wrk.format("POST", "/jobs", post_headers, body)
end

response = function(status, headers, response_body)
  if status == 202 then
    local id = response_body:match('"request_id":"([^"]+)"')
    if id then
      if #ids < 1000 then ids[#ids + 1] = id else ids[math.random(1000)] = id end
    end
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "non_2xx": %d, "over_timeout": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout))
end
