-- Record, before anything is written, the id a claimed request is about to create, so
-- a retry that takes the key over after a crash finishes that very job or batch.
--
-- Returns 1 when recorded, 0 when the claim is no longer this request's.
-- KEYS[1] record; ARGV: 1 owner token, 2 the job or batch id
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
  redis.call('HSET', KEYS[1], 'resource', ARGV[2])
  return 1
end
return 0
