-- How long a caller must wait before calling an upstream (cool-down and request rate),
-- reserving its turn in the rate (GCRA-style).
--
-- KEYS: 1 the upstream's cool-down, 2 its rate reservation time
-- ARGV: 1 now ms, 2 the interval between requests ms (0: no rate limit), 3 burst ms
-- Returns the wait in ms (0 or less: call now).
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local earliest = now
local cooldown = tonumber(redis.call('GET', KEYS[1]) or '0')
if cooldown > earliest then earliest = cooldown end
if interval > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
  earliest = math.max(earliest, tat - burst)
  local next_tat = math.max(tat, earliest) + interval
  redis.call('SET', KEYS[2], next_tat, 'PX', next_tat - now + 60000)
end
return earliest - now
