-- Take up to ARGV[3] due events of the outbox, moving each one lease ahead.
--
-- KEYS: 1 the outbox
-- ARGV: 1 now ms, 2 now + lease ms, 3 how many at most
-- Returns the event ids taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, event in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], event) end
return due
