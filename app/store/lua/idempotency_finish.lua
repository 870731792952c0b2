-- Record the answer of the request that holds the claim.
--
-- Returns 1 when recorded, 0 when another request owns the key now.
-- KEYS[1] record; ARGV: 1 owner token, 2 done ttl ms, 3.. field/value pairs.
-- A record that expired unseen is still ours to finish; another request's is not.
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'owner', ARGV[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
