-- Rotate a tenant's webhook signing secret: count the rotation, and keep the secret
-- it replaces signing until ARGV[2].
--
-- KEYS: 1 the tenant's generated secret, 2 the tenant's rotation hash
-- ARGV: 1 the new generated secret, or '' when secrets are derived from a root (then
--       only the generation changes and no secret is stored), 2 the previous
--       secret's expiry ms
-- Returns {the new generation, the replaced generated secret or false}.
local generation = redis.call('HINCRBY', KEYS[2], 'generation', 1)
redis.call('HSET', KEYS[2], 'previous_until', ARGV[2])
local replaced = false
if ARGV[1] ~= '' then
  replaced = redis.call('GET', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1])
  if replaced then
    redis.call('HSET', KEYS[2], 'previous', replaced)
  else
    redis.call('HDEL', KEYS[2], 'previous')
  end
end
return {generation, replaced}
