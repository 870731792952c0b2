-- Count one request in a fixed window that opens with its first request.
--
-- KEYS: 1 the counter
-- ARGV: 1 the window ms
-- Returns {count, ms left in the window}.
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
