-- The reaper's decision, taken atomically with what it checks: the run is still in the running
-- set, running, not between two steps (a hand-off whose task is not sent yet does not count),
-- and its lease expired (or, with ARGV[2], its pool process ARGV[2] died and no later claim
-- replaced it). A scan reads the running set, the record and the lease one after the other; a
-- playbook handing off to its next step in between would otherwise look lost. Marks it failed
-- at once so that no later claim or hand-off of it succeeds. Returns 1 or 0.
-- KEYS: record, lease, running set
-- ARGV: execution id, dead pool process id or ''
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], F.STATUS) ~= S.RUNNING then return 0 end
if redis.call('HEXISTS', KEYS[1], F.COMPLETE_ID) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], F.STEP_QUEUED) == 1
  and redis.call('HEXISTS', KEYS[1], F.HAND_OFF) == 0 then return 0 end
if ARGV[2] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
elseif redis.call('HGET', KEYS[1], F.WORKER_PID) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], F.STATUS, S.FAILED)
redis.call('SREM', KEYS[3], ARGV[1])
return 1
