-- Take an Idempotency-Key for one request, or read the record someone else holds.
--
-- Returns the existing record (HGETALL) or an empty list when this request took it.
-- KEYS[1] record; ARGV: 1 owner token, 2 fingerprint, 3 claim ttl ms
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGETALL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'in_progress', 'owner', ARGV[1], 'fingerprint', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {}
