-- Give a claim back (nothing was created: the key may be used again).
--
-- Returns 1 when released, 0 when the claim is no longer this request's.
-- KEYS[1] record; ARGV: 1 owner token
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
  return redis.call('DEL', KEYS[1])
end
return 0
