-- wrk script for scripts/bench_serve.sh: POSTs one prepared KServe v2 request body (JSON head +
-- binary tensor bytes) and prints the run as one line `RESULT {json}`.
-- Environment: BODY_FILE (the body), HEADER_LENGTH (its JSON part's length, in bytes).

local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = os.getenv("HEADER_LENGTH")

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50.0), latency:percentile(99.0),
    e.status, e.connect + e.read + e.write + e.timeout))
end
