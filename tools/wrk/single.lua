-- wrk: GET {path}/{id} with a random id from s1..sN.
--   wrk -s tools/wrk/single.lua http://127.0.0.1:8080 -- /v1/sessions 1000
local path, n = "/v1/sessions", 1000
function init(args)
  path = args[1] or path
  n = tonumber(args[2] or n)
  math.randomseed(os.time() + (id or 0))
end
function request()
  return wrk.format("GET", path .. "/s" .. math.random(1, n))
end
