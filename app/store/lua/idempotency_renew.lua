-- Extend a claim this request still holds.
--
-- Returns 1 when renewed, 0 when the claim is no longer this request's.
-- KEYS[1] record; ARGV: 1 owner token, 2 claim ttl ms
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
