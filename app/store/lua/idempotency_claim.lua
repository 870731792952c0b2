-- Take an Idempotency-Key for one request, take over one whose holder stopped
-- renewing its lease (an API process that died mid-request), or read the record
-- someone else holds.
--
-- KEYS[1] record
-- ARGV: 1 owner token, 2 fingerprint, 3 lease ms, 4 record ttl ms
-- Returns {'claimed', resource}: this request holds the key now; resource is the id
-- the dead holder had reserved ('' if none), to be finished rather than made again.
-- Otherwise {'existing', field, value, ...}: the record (HGETALL).
local record = KEYS[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_until = now + tonumber(ARGV[3])
if redis.call('EXISTS', record) == 1 then
  local state, fingerprint, lease = unpack(redis.call('HMGET', record, 'state', 'fingerprint', 'lease'))
  if state == 'in_progress' and fingerprint == ARGV[2] and lease and tonumber(lease) < now then
    redis.call('HSET', record, 'owner', ARGV[1], 'lease', lease_until)
    return {'claimed', redis.call('HGET', record, 'resource') or ''}
  end
  local reply = redis.call('HGETALL', record)
  table.insert(reply, 1, 'existing')
  return reply
end
redis.call('HSET', record, 'state', 'in_progress', 'owner', ARGV[1], 'fingerprint', ARGV[2],
  'lease', lease_until)
redis.call('PEXPIRE', record, ARGV[4])
return {'claimed', ''}
