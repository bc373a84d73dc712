-- Mark the cancel request; returns the status it found ('unknown' when there is no record,
-- 'ended:<status>' when it already ended). A queued execution becomes cancelled at once, so
-- no worker claims it afterwards; the caller then publishes its cancelled + complete events.
-- A playbook between two steps (its next step queued, not claimed) counts as queued: no worker
-- holds it, so the caller ends it the same way and the late step's claim refuses.
-- KEYS: record
-- ARGV: who asks (a token's name, or ''), kept as the record's cancelledBy
local status = redis.call('HGET', KEYS[1], F.STATUS)
if not status then return R.UNKNOWN end
if redis.call('HEXISTS', KEYS[1], F.COMPLETE_ID) == 1 then return R.ENDED .. ':' .. status end
redis.call('HSET', KEYS[1], F.CANCEL_REQUESTED, '1')
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], F.CANCELLED_BY, ARGV[1]) end
local between = status == S.RUNNING and redis.call('HEXISTS', KEYS[1], F.STEP_QUEUED) == 1
if status == S.QUEUED or between then
  redis.call('HDEL', KEYS[1], F.STEP_QUEUED, F.HAND_OFF)
  redis.call('HSET', KEYS[1], F.STATUS, S.CANCELLED)
  return R.QUEUED
end
return status
