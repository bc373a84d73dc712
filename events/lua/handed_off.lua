-- The next step's task is in the broker: from now until its claim no worker holds the run, so
-- it leaves the running set (the reaper must not declare it lost while the step waits in a
-- queue). Only if that step's hand-off is still pending: a fast claim on another host (which
-- took the run, lease and all) or a cancel came first otherwise. Returns 1 or 0.
-- KEYS: record, lease, running set
-- ARGV: step index, execution id
if redis.call('HGET', KEYS[1], F.HAND_OFF) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], F.HAND_OFF)
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
