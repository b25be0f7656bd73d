-- GCRA over several quotas of one key, atomically, in one round trip.
-- The same integer arithmetic as src/rate_limit/gcra.rs (times in microseconds).
--
-- KEYS[i]    the TAT of quota i (all KEYS share one hash tag: one Redis Cluster slot)
-- ARGV[1]    cost of the request
-- ARGV[2]    "" to use Redis TIME (always, in production); a number to decide at that
--            instant instead (used by the tests that compare this script with gcra.rs)
-- ARGV[2+2i-1], ARGV[2+2i]   emission interval (us) and burst of quota i
--
-- Returns {allowed, now, then per quota: remaining, retry_after_us (-1: never), reset_us}.
-- A refused request writes nothing.

local function idiv(a, b)
  -- Exact floor division for whole numbers below 2^53 (a plain a/b may round up).
  return (a - a % b) / b
end

local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local cost = tonumber(ARGV[1])
local n = #KEYS
local allowed = true
local before, after, new_tats = {}, {}, {}

for i = 1, n do
  local emission = tonumber(ARGV[1 + 2 * i])
  local burst = tonumber(ARGV[2 + 2 * i])
  local cap = emission * burst
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat == nil or tat < now then tat = now end
  local rem_now = math.max(0, idiv(now + cap - tat, emission))
  before[i] = {rem_now, 0, tat - now}
  if cost > burst then
    allowed = false
    after[i] = {rem_now, -1, tat - now}
  else
    local new_tat = tat + cost * emission
    local allow_at = new_tat - cap
    if now < allow_at then
      allowed = false
      after[i] = {rem_now, allow_at - now, tat - now}
    else
      new_tats[i] = new_tat
      after[i] = {math.max(0, idiv(now + cap - new_tat, emission)), 0, new_tat - now}
    end
  end
end

local out = {allowed and 1 or 0, now}
for i = 1, n do
  local v = after[i]
  -- Refused: quotas that would have admitted it are reported as they stand.
  if not allowed and new_tats[i] ~= nil then v = before[i] end
  out[#out + 1] = v[1]
  out[#out + 1] = v[2]
  out[#out + 1] = v[3]
end
if allowed then
  for i = 1, n do
    -- Stored as plain integer text; read back exactly by tonumber above.
    local ttl = math.ceil((new_tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', string.format('%.0f', ttl))
  end
end
return out
