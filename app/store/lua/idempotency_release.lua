-- Give a claim back: the request answered with an error.
--
-- A claim that reserved nothing created nothing: the record goes and the key may be
-- used afresh. A claim that reserved an id may have written part of that job or
-- batch: the record stays with its lease ended, so the next retry takes it over at
-- once and finishes that id instead of making a second one.
-- Returns 1 when released, 0 when the claim is no longer this request's.
-- KEYS[1] record; ARGV: 1 owner token
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'state') == 'in_progress' then
  if redis.call('HEXISTS', KEYS[1], 'resource') == 1 then
    redis.call('HSET', KEYS[1], 'lease', 0)
    return 1
  end
  return redis.call('DEL', KEYS[1])
end
return 0
