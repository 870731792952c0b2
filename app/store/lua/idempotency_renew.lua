-- Extend the lease of a claim this request still holds.
--
-- Returns 1 when renewed, 0 when the claim is no longer this request's.
-- KEYS[1] record; ARGV: 1 owner token, 2 lease ms
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('HSET', KEYS[1], 'lease', now + tonumber(ARGV[2]))
  return 1
end
return 0
