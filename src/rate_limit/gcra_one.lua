-- GCRA for one quota: the common case of src/rate_limit/gcra.lua, with nothing to loop
-- over or collect. Same arguments, for one key. Replies with the smallest reply that says
-- it all (the remaining units follow from reset_us and the quota): admitted, the integer
-- reset_us alone; refused, {retry_after_us (-1: never), reset_us}.

-- `now` comes from now.lua, which is prepended to this script.
local emission = tonumber(ARGV[3])
local cap = emission * tonumber(ARGV[4])
local inc = tonumber(ARGV[1]) * emission
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if inc > cap then
  return {-1, tat - now}
end
local new_tat = tat + inc
if new_tat - cap > now then
  return {new_tat - cap - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return new_tat - now
