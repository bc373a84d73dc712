-- Claim an execution for a worker: 'ok' when the caller now owns it, else the reason it may
-- not run it. ARGV[6] is a playbook step's index ('' for a command): only the step whose task
-- was queued last (stepQueued) may run, and only once. The previous step's pool process ids
-- are dropped so that the reaper never judges this run by a process of another host.
-- KEYS: record, lease, running set
-- ARGV: expected status, worker, lease ttl (s), task id, execution id, step index or ''
local status = redis.call('HGET', KEYS[1], F.STATUS)
if not status then return R.UNKNOWN end
if redis.call('HEXISTS', KEYS[1], F.COMPLETE_ID) == 1 then return R.ENDED end
if status ~= ARGV[1] then return status end
local step = ARGV[6]
if step ~= '' and redis.call('HGET', KEYS[1], F.STEP_QUEUED) ~= step then return R.STALE end
if redis.call('HGET', KEYS[1], F.CANCEL_REQUESTED) == '1' then return R.CANCEL end
if step ~= '' then
  redis.call('HDEL', KEYS[1], F.STEP_QUEUED, F.HAND_OFF)
  redis.call('HSET', KEYS[1], F.STEP_INDEX, step)
end
redis.call('HDEL', KEYS[1], F.PID, F.WORKER_PID)
redis.call('HSET', KEYS[1], F.STATUS, S.RUNNING, F.WORKER, ARGV[2], F.TASK_ID, ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[3], ARGV[5])
return R.OK
