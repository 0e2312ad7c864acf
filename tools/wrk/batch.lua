-- wrk: GET {path}?ids=... with K random ids from s1..sN.
--   wrk -s tools/wrk/batch.lua http://127.0.0.1:8080 -- /v1/sessions 1000 50
local path, n, k = "/v1/sessions", 1000, 50
function init(args)
  path = args[1] or path
  n = tonumber(args[2] or n)
  k = tonumber(args[3] or k)
  math.randomseed(os.time() + (id or 0))
end
function request()
  local ids = {}
  for i = 1, k do ids[i] = "s" .. math.random(1, n) end
  return wrk.format("GET", path .. "?ids=" .. table.concat(ids, ","))
end
