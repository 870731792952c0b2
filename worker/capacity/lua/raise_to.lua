-- Raise a numeric key to a value, never lower it.
--
-- KEYS: 1 the key
-- ARGV: 1 the value, 2 its lifetime ms ('' or absent: no expiry)
-- Returns 1 when the key was raised, 0 when it already held as much or more.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= current then return 0 end
if ARGV[2] and ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
