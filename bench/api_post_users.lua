-- wrk script for bench.api: POST /users with a body no other request of the run repeats.
-- Emails are unique per database, so a repeat would be a 409 (or a 500 for the baseline) and
-- would time a different path. Each email carries the run's nonce (wrk's first script
-- argument, new for every wrk invocation), the thread's number and the thread's own counter.
-- done() prints one JSON line, so bench.api parses numbers rather than wrk's text report.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local threads = {}
local counter = 0
local nonce = "none"
thread_number = 0 -- a global: setup() sets it in each thread's own Lua state

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  nonce = args[1] or nonce
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"email": "u%s-%d-%d@example.com", "full_name": "Bench User %d-%d"}',
    nonce, thread_number, counter, thread_number, counter
  )
  return wrk.format(nil, "/users", nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_API_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)
  ))
end
