-- A queued playbook that got its slot: mark its first step queued. Returns 'ok', or the status
-- that stops it (a cancelled run must give its slot back).
-- KEYS: record
-- ARGV: task id
local status = redis.call('HGET', KEYS[1], F.STATUS)
if not status then return R.UNKNOWN end
if redis.call('HEXISTS', KEYS[1], F.COMPLETE_ID) == 1 then return R.ENDED end
if status ~= S.QUEUED then return status end
if redis.call('HGET', KEYS[1], F.CANCEL_REQUESTED) == '1' then return R.CANCEL end
redis.call('HSET', KEYS[1], F.STEP_QUEUED, '0', F.TASK_ID, ARGV[1])
return R.OK
