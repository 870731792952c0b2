-- Move one job to a new status, fenced by its run and attempt numbers.
--
-- KEYS: 1 the job's hash, 2 its transition log, 3 the retention index
-- ARGV: 1 token (marks this transition for the scripts run after it in the same
--       MULTI), 2 allowed source statuses (space-separated), 3 target status,
--       4 expected run ('' for any), 5 '1' to start a new run, 6 expected attempt
--       ('' for any), 7 '1' to start a new attempt, 8 retention s, 9 now ms, 10 the
--       job id, 11 the events channel, 12 the batch id the caller expects ('' for
--       none), 13.. field/value pairs to set ('' deletes)
-- Returns {code, previous status, run, attempt}: code 1 applied, 0 missing,
-- -1 stale (run or attempt moved on), -2 refused (status), -3 wrong batch.
local job, log, retention = KEYS[1], KEYS[2], KEYS[3]
local token, sources, target = ARGV[1], ARGV[2], ARGV[3]
local retention_s, now, id = tonumber(ARGV[8]), ARGV[9], ARGV[10]

local status = redis.call('HGET', job, 'status')
if not status then return {0, '', 0, 0} end
local run = tonumber(redis.call('HGET', job, 'run'))
local attempt = tonumber(redis.call('HGET', job, 'attempt') or '0')
if (redis.call('HGET', job, 'batch') or '') ~= ARGV[12] then
  return {-3, status, run, attempt}
end
if ARGV[4] ~= '' and run ~= tonumber(ARGV[4]) then return {-1, status, run, attempt} end
if ARGV[6] ~= '' and attempt ~= tonumber(ARGV[6]) then return {-1, status, run, attempt} end
if not string.find(' ' .. sources .. ' ', ' ' .. status .. ' ', 1, true) then
  return {-2, status, run, attempt}
end
if ARGV[5] == '1' then run = run + 1 end
if ARGV[7] == '1' then attempt = attempt + 1 end
redis.call('HSET', job, 'status', target, 'run', run, 'attempt', attempt,
  'tx', token, 'tx_from', status)
for i = 13, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', job, ARGV[i])
  else redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', job, retention_s)
redis.call('ZADD', retention, tonumber(now) + retention_s * 1000, id)
redis.call('XADD', log, 'MAXLEN', '~', 1000, '*', 'status', target, 'run', run, 'at', now)
redis.call('EXPIRE', log, retention_s)
redis.call('PUBLISH', ARGV[11],
  string.format('{"id":"%s","status":"%s","run":%d}', id, target, run))
return {1, status, run, attempt}
