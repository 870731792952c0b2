-- Give slot tokens back (or just reap expired ones) and wake as many waiters as slots
-- are free, by scoring their arq jobs "now" in their lane's queue.
--
-- KEYS: 1 the upstream's slots, 2 its waiting tickets, 3 the interactive lane's
--       queue, 4 the bulk lane's queue
-- ARGV: 1 now ms, 2 the upstream's cap, 3.. the tokens to give back
-- Returns how many waiters were woken.
local now = tonumber(ARGV[1])
if #ARGV > 2 then redis.call('ZREM', KEYS[1], unpack(ARGV, 3)) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
if free <= 0 then return 0 end
local woken = redis.call('ZPOPMIN', KEYS[2], free)
for i = 1, #woken, 2 do
  local sep = string.find(woken[i], '|', 1, true)
  local queue = KEYS[3]
  if string.sub(woken[i], 1, sep - 1) == 'bulk' then queue = KEYS[4] end
  redis.call('ZADD', queue, 'XX', now, string.sub(woken[i], sep + 1))
end
return #woken / 2
