-- A playbook's step ended and the next one is about to be queued: the next step is marked
-- queued (a cancel now ends the run at once, cancel.lua) and handOff says its task is being
-- sent. Until handed_off.lua confirms the send, the run keeps a fresh lease and its place in
-- the running set, so a worker that dies before sending is declared lost like any other
-- (nothing would ever run the next step). Returns 'ok', 'cancel' (a cancel came first: the
-- caller ends the run) or 'ended'.
-- KEYS: record, lease, running set
-- ARGV: step index, task id, execution id, worker, lease ttl (s)
if redis.call('HEXISTS', KEYS[1], F.COMPLETE_ID) == 1 then return R.ENDED end
if redis.call('HGET', KEYS[1], F.STATUS) ~= S.RUNNING then return R.ENDED end
if redis.call('HGET', KEYS[1], F.CANCEL_REQUESTED) == '1' then return R.CANCEL end
redis.call('HSET', KEYS[1], F.STEP_QUEUED, ARGV[1], F.TASK_ID, ARGV[2], F.HAND_OFF, ARGV[1])
redis.call('SET', KEYS[2], ARGV[4], 'EX', tonumber(ARGV[5]))
return R.OK
