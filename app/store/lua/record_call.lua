-- Record one upstream call of a running job: a new call as it starts, or the end of
-- one recorded before; unless the job has moved on from the run and claim that made it.
--
-- KEYS: 1 the job's hash
-- ARGV: 1 the call's run, 2 its attempt (the claim that made it), 3 its number ('' for
--       a new call), 4 the call (JSON), 5 the statuses the job may have (space-separated:
--       'running', or 'running canceled' to record the upstream cancel of a canceled job)
-- Returns the call's number (its field is 'call:<number>'), 0 when the job is not
-- in one of those statuses under that run and attempt.
local job = KEYS[1]
local state = redis.call('HMGET', job, 'status', 'run', 'attempt')
local accepted = ' ' .. (ARGV[5] or 'running') .. ' '
if not state[1] or not string.find(accepted, ' ' .. state[1] .. ' ', 1, true)
    or tonumber(state[2]) ~= tonumber(ARGV[1]) or tonumber(state[3]) ~= tonumber(ARGV[2]) then
  return 0
end
local number = tonumber(ARGV[3]) or redis.call('HINCRBY', job, 'calls', 1)
redis.call('HSET', job, 'call:' .. number, ARGV[4])
return number
