-- Record calls of a running job, unless its run has moved on.
--
-- KEYS: 1 the job's hash
-- ARGV: 1 the run the calls belong to, 2 the attempts (a JSON array)
-- Returns 1 when recorded, 0 when the run is no longer current.
local run = redis.call('HGET', KEYS[1], 'run')
if not run or tonumber(run) ~= tonumber(ARGV[1]) then return 0 end
local existing = redis.call('HGET', KEYS[1], 'attempts') or '[]'
if existing == '[]' then existing = ARGV[2]
else existing = string.sub(existing, 1, -2) .. ',' .. string.sub(ARGV[2], 2) end
redis.call('HSET', KEYS[1], 'attempts', existing)
return 1
