-- Release the next waiting variant of a batch to the bulk queue when one finishes.
--
-- Runs in the same MULTI right after move_job.lua, and only acts when that
-- transition applied (the job's 'tx' is this token) and took the variant from a
-- non-terminal status to a terminal one. The released variant's arq payload was
-- written when the batch was created (``app.dispatch``); releasing it only scores
-- it in the queue, as arq's enqueue does.
-- KEYS: 1 the variant's job hash, 2 the batch's pending list, 3 the bulk queue
-- ARGV: 1 token, 2 now ms
-- Returns the released arq job id, or '' when none was released.
local job, pending, queue = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', job, 'tx') ~= ARGV[1] then return '' end
local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'canceled'
end
if is_terminal(redis.call('HGET', job, 'tx_from')) then return '' end
if not is_terminal(redis.call('HGET', job, 'status')) then return '' end
local released = redis.call('LPOP', pending)
if not released then return '' end
redis.call('ZADD', queue, ARGV[2], released)
return released
