-- Record a webhook event for a transition and put it in the delivery outbox.
--
-- Runs in the same MULTI after the transition it reports, and only acts when that
-- transition applied to the subject (the subject's 'tx' is this token) and the
-- subject subscribed to this event type (its 'webhook_events' field).
-- KEYS: 1 the subject's hash (a job or a batch), 2 the event's hash, 3 the
--       subject's event list, 4 the outbox
-- ARGV: 1 token, 2 event type, 3 the subject id, 4 retention s, 5 now ms,
--       6 the event id
-- Returns 1 when the event was recorded, 0 otherwise (already there included).
local subject, event, events, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, kind, retention_s, now = ARGV[1], ARGV[2], tonumber(ARGV[4]), ARGV[5]
if redis.call('HGET', subject, 'tx') ~= token then return 0 end
local subscribed = redis.call('HGET', subject, 'webhook_events')
if not subscribed or not string.find(subscribed, ' ' .. kind .. ' ', 1, true) then
  return 0
end
if redis.call('EXISTS', event) == 1 then return 0 end
redis.call('HSET', event, 'subject', ARGV[3], 'type', kind,
  'tenant', redis.call('HGET', subject, 'tenant'), 'state', 'pending', 'attempts', 0,
  'created_at', now)
redis.call('EXPIRE', event, retention_s)
redis.call('RPUSH', events, ARGV[6])
redis.call('EXPIRE', events, retention_s)
redis.call('ZADD', outbox, now, ARGV[6])
return 1
