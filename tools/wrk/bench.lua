-- wrk script for tools/bench: random-id reads against any of the contenders,
-- and a done() hook that prints one machine-readable line.
--
--   wrk -t1 -c64 -d10s -s tools/wrk/bench.lua http://127.0.0.1:8080 -- \
--       path=/v1/sessions?ids={ids} k=50 hot=1-10000
--
-- Arguments (key=value):
--   path=T      request target; {id} is one id, {ids} is k ids joined by sep
--   item=T      how one id appears inside {ids} (default {id}; Webdis MGET
--               uses session:{id})
--   sep=S       separator for {ids} (default ","; "slash" means "/")
--   k=N         ids per request for {ids} (default 50)
--   hot=A-B     ids are "s" .. a number drawn uniformly from A..B
--   cold=C-D    with miss=P: each id comes from C..D with probability P
--   miss=P      (e.g. 0.1: 10% of ids from the cold range)
--   method=M    GET (default) or POST; POST sends body=... as the body
--   targets=F   request targets from file F, one per line, each request
--               drawn at random from them (instead of path=)
--
-- Headers given to wrk with -H (e.g. -H "Authorization: Bearer ...") go
-- on every request.
--
-- Requests are drawn at start-up (4096 of them, random) and replayed in a
-- cycle, so wrk spends its time on the network, not in Lua: with -t1 the
-- load generator has one core, and a Lua string build per request would
-- cap every contender at the same low rate.
--
-- done() prints:  BENCH_RESULT {"requests":...,"p50_us":...}
local opts = {}
local reqs = {}
local nreq, cur = 0, 0

local function range(s)
  local a, b = string.match(s or "", "^(%d+)-(%d+)$")
  return tonumber(a), tonumber(b)
end

local function pick_id(hot_a, hot_b, cold_a, cold_b, miss)
  if miss > 0 and math.random() < miss then
    return "s" .. math.random(cold_a, cold_b)
  end
  return "s" .. math.random(hot_a, hot_b)
end

function init(args)
  for _, a in ipairs(args) do
    local k, v = string.match(a, "^([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  local path = opts.path or "/"
  local item = opts.item or "{id}"
  local sep = opts.sep or ","
  if sep == "slash" then sep = "/" end
  local k = tonumber(opts.k or 50)
  local hot_a, hot_b = range(opts.hot or "1-10000")
  local cold_a, cold_b = range(opts.cold or "")
  local miss = tonumber(opts.miss or 0)
  local method = opts.method or "GET"
  local body = opts.body
  local headers = nil
  if body then
    -- wrk.format uses wrk.headers (wrk's -H) only when given none.
    headers = { ["Content-Type"] = "application/json" }
    for hk, hv in pairs(wrk.headers) do headers[hk] = hv end
  end
  math.randomseed(os.time() + (id or 0))
  local targets = nil
  if opts.targets then
    targets = {}
    for line in io.lines(opts.targets) do
      if line ~= "" then targets[#targets + 1] = line end
    end
    assert(#targets > 0, "targets=" .. opts.targets .. ": no targets")
  end
  local dynamic = targets ~= nil or string.find(path, "{id", 1, true) ~= nil
  local n = dynamic and 4096 or 1
  for r = 1, n do
    local p = path
    if targets then
      p = targets[math.random(1, #targets)]
    elseif string.find(p, "{ids}", 1, true) then
      local parts = {}
      for i = 1, k do
        local one = string.gsub(item, "{id}", pick_id(hot_a, hot_b, cold_a, cold_b, miss))
        parts[i] = one
      end
      p = string.gsub(p, "{ids}", (string.gsub(table.concat(parts, sep), "%%", "%%%%")))
    elseif string.find(p, "{id}", 1, true) then
      p = string.gsub(p, "{id}", pick_id(hot_a, hot_b, cold_a, cold_b, miss))
    end
    reqs[r] = wrk.format(method, p, headers, body)
  end
  nreq = n
end

function request()
  cur = cur % nreq + 1
  return reqs[cur]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
