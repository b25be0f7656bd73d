-- GCRA over several quotas of one key, atomically, in one round trip.
-- The same integer arithmetic as src/rate_limit/gcra.rs (times in microseconds).
--
-- KEYS[i]    the TAT of quota i (all KEYS share one hash tag: one Redis Cluster slot)
-- ARGV[1]    cost of the request
-- ARGV[2]    "" to use Redis TIME (always, in production); a number to decide at that
--            instant instead (used by the tests that compare this script with gcra.rs)
-- ARGV[1+2i], ARGV[2+2i]   emission interval (us) and burst of quota i
--
-- Returns {allowed, now, then per quota: retry_after_us (-1: never, 0: admits), reset_us}.
-- The remaining units follow from reset_us and the quota, so they are not sent.
-- A refused request writes nothing. Redis runs scripts one at a time, so this is written
-- to allocate little: at high concurrency its cost is the limiter's throughput.

-- `now` comes from now.lua, which is prepended to this script.
local cost = tonumber(ARGV[1])
local n = #KEYS
local out = {1, now}
local allowed = true

for i = 1, n do
  local emission = tonumber(ARGV[1 + 2 * i])
  local cap = emission * tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local inc = cost * emission
  local base = 1 + 2 * i
  if inc > cap then
    allowed = false
    out[base] = -1
    out[base + 1] = tat - now
  elseif tat + inc - cap > now then
    allowed = false
    out[base] = tat + inc - cap - now
    out[base + 1] = tat - now
  else
    out[base] = 0
    out[base + 1] = tat + inc - now
  end
end

if allowed then
  for i = 1, n do
    local new_tat = now + out[2 + 2 * i]
    redis.call('SET', KEYS[i], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
  end
else
  -- Nothing is taken: quotas that would have admitted it are reported as they stand.
  for i = 1, n do
    if out[1 + 2 * i] == 0 then
      out[2 + 2 * i] = out[2 + 2 * i] - cost * tonumber(ARGV[1 + 2 * i])
    end
  end
  out[1] = 0
end
return out
