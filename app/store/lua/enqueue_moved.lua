-- Queue a job's new run for the workers when the transition just before it applied.
--
-- Runs in the same MULTI right after move_job.lua (a retry: failed or canceled ->
-- queued), so the move and the enqueue happen together or not at all: a process
-- dying between them can no longer leave a job queued that no worker will ever pick.
-- Acts only when that transition applied (the job's 'tx' is this token). Writes what
-- arq's enqueue writes: the payload and the run's score in the lane's queue.
-- KEYS: 1 the job's hash, 2 the run's arq payload key, 3 the lane's queue
-- ARGV: 1 token, 2 payload, 3 payload ttl ms, 4 arq job id, 5 score (now ms)
-- Returns 1 when queued, 0 when the transition did not apply.
if redis.call('HGET', KEYS[1], 'tx') ~= ARGV[1] then return 0 end
redis.call('PSETEX', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
return 1
