-- The instant of the decision, in microseconds: Redis TIME, so every instance agrees,
-- unless ARGV[2] names one (the tests that compare the scripts with gcra.rs).
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
