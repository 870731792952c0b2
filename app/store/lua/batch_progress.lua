-- Count a variant's transition in its batch, and finish the batch with its last variant.
--
-- Runs in the same MULTI right after move_job.lua, and only acts when that
-- transition applied (the job's 'tx' is this token).
-- KEYS: 1 the variant's job hash, 2 the batch's hash, 3 the batch's log,
--       4 the retention index
-- ARGV: 1 token, 2 retention s, 3 now ms, 4 the batch id, 5 the events channel
-- Returns the batch's status after the change, or '' when nothing was counted.
-- A batch that completes is marked with this token ('tx'), for webhook_event.lua.
local job, batch, log, retention = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, retention_s, now, id = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
if redis.call('HGET', job, 'tx') ~= token then return '' end
if redis.call('EXISTS', batch) == 0 then return '' end
local previous = redis.call('HGET', job, 'tx_from')
local target = redis.call('HGET', job, 'status')

local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'canceled'
end

local function add_usage(outcome)
  local ok, decoded = pcall(cjson.decode, outcome or '')
  if not ok or type(decoded) ~= 'table' or type(decoded.usage) ~= 'table' then return end
  local usage = decoded.usage
  for _, name in ipairs({'total_tokens', 'input_tokens', 'output_tokens'}) do
    if type(usage[name]) == 'number' then
      redis.call('HINCRBY', batch, 'u_' .. name, math.floor(usage[name]))
    end
  end
  if type(usage.input_tokens_details) == 'table' then
    for name, value in pairs(usage.input_tokens_details) do
      if type(value) == 'number' then
        redis.call('HINCRBY', batch, 'ud_' .. name, math.floor(value))
      end
    end
  end
end

redis.call('EXPIRE', batch, retention_s)
redis.call('ZADD', retention, tonumber(now) + retention_s * 1000, id)
redis.call('HINCRBY', batch, 'n_' .. previous, -1)
redis.call('HINCRBY', batch, 'n_' .. target, 1)
if target == 'succeeded' then add_usage(redis.call('HGET', job, 'outcome')) end
local status = redis.call('HGET', batch, 'status')
if is_terminal(target) and not is_terminal(previous) then
  local counts = redis.call('HMGET', batch, 'total', 'n_succeeded', 'n_failed', 'n_canceled')
  local done = tonumber(counts[2] or 0) + tonumber(counts[3] or 0) + tonumber(counts[4] or 0)
  if done == tonumber(counts[1]) then
    status = redis.call('HGET', batch, 'cancel_requested') and 'canceled' or 'completed'
    redis.call('HSET', batch, 'status', status, 'finished_at', now, 'tx', token)
  end
elseif is_terminal(previous) and not is_terminal(target) and status ~= 'running' then
  status = 'running'
  redis.call('HSET', batch, 'status', status)
  redis.call('HDEL', batch, 'finished_at')
end
local n = redis.call('HMGET', batch, 'n_queued', 'n_running', 'n_succeeded', 'n_failed',
  'n_canceled')
redis.call('XADD', log, 'MAXLEN', '~', 50000, '*', 'status', status,
  'counts', string.format(
    '{"queued":%d,"running":%d,"succeeded":%d,"failed":%d,"canceled":%d}',
    tonumber(n[1] or 0), tonumber(n[2] or 0), tonumber(n[3] or 0), tonumber(n[4] or 0),
    tonumber(n[5] or 0)),
  'at', now)
redis.call('EXPIRE', log, retention_s)
redis.call('PUBLISH', ARGV[5], string.format('{"id":"%s","status":"%s","run":0}', id, status))
return status
