-- GCRA for one quota: the common case of src/rate_limit/gcra.lua, with nothing to loop
-- over or collect. Same arguments, for one key; replies {remaining, retry_after_us
-- (-1: never, 0: admitted), reset_us}, the smallest reply that says it all.

-- `now` comes from now.lua, which is prepended to this script.
local emission = tonumber(ARGV[3])
local cap = emission * tonumber(ARGV[4])
local inc = tonumber(ARGV[1]) * emission
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + inc
local r = now + cap - new_tat
if inc > cap then
  r = now + cap - tat
  return {(r - r % emission) / emission, -1, tat - now}
end
if r < 0 then
  r = now + cap - tat
  return {(r - r % emission) / emission, new_tat - cap - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {(r - r % emission) / emission, 0, new_tat - now}
