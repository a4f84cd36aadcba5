-- wrk script of the pinned benchmark (hack/bench/pinned.py):
--   wrk ... -s hack/bench/pinned.lua URL -- BODY.json [BODY.json ...]
-- POSTs the JSON bodies to /v1/completions in turn. Each request is formatted once, in init: per
-- request wrk only picks the next string, so the client's cost does not grow with the prompt.
-- When done, prints one line `PINNED {json}` with the counts and the latency percentiles (microseconds).
local reqs, n, i = {}, 0, 0

function init(args)
  for _, path in ipairs(args) do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    n = n + 1
    reqs[n] = wrk.format("POST", "/v1/completions", {["Content-Type"] = "application/json"}, body)
  end
  assert(n > 0, "no body files after --")
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'PINNED {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d}, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
