-- Take slots on several upstreams at once, or queue a waiter and park its arq job.
--
-- KEYS: 1..k each upstream's slots, k+1..2k each upstream's waiting tickets,
--       2k+1 the interactive lane's queue, 2k+2 the bulk lane's queue
-- ARGV: 1 now ms, 2 the tokens' lease expiry ms, 3 the ticket ('<lane>|<arq job id>',
--       '' for none), 4 the ticket's rank, 5 the holder (names the tokens),
--       6 park ms (0: do not park), then per upstream i: 5+2i need, 6+2i cap
-- Returns 1 when every slot was taken, 0 when the job must wait (its ticket queued
-- on the first full upstream and, with park ms > 0, its arq job scored park ms ahead
-- in its lane's queue so that only a wake-up brings it back early).
local k = (#KEYS - 2) / 2
local now = tonumber(ARGV[1])
local ticket = ARGV[3]
for i = 1, k do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
for i = 1, k do
  local need = tonumber(ARGV[5 + 2 * i])
  local cap = tonumber(ARGV[6 + 2 * i])
  local full = redis.call('ZCARD', KEYS[i]) + need > cap
  if not full and ticket ~= '' then
    -- no queue jumping: a waiter ranked before this ticket goes first
    local first = redis.call('ZRANGE', KEYS[k + i], 0, 0, 'WITHSCORES')
    full = first[1] ~= nil and first[1] ~= ticket and tonumber(first[2]) < tonumber(ARGV[4])
  end
  if full then
    if ticket ~= '' then
      redis.call('ZADD', KEYS[k + i], 'NX', ARGV[4], ticket)
      if tonumber(ARGV[6]) > 0 then
        local sep = string.find(ticket, '|', 1, true)
        local queue = KEYS[2 * k + 1]
        if string.sub(ticket, 1, sep - 1) == 'bulk' then queue = KEYS[2 * k + 2] end
        redis.call('ZADD', queue, 'XX', now + tonumber(ARGV[6]), string.sub(ticket, sep + 1))
      end
    end
    return 0
  end
end
for i = 1, k do
  local need = tonumber(ARGV[5 + 2 * i])
  for j = 1, need do
    redis.call('ZADD', KEYS[i], ARGV[2], ARGV[5] .. ':' .. i .. ':' .. j)
  end
  redis.call('ZREM', KEYS[k + i], ticket)
end
return 1
