-- Take one of `max` slots (ARGV[2]) or join the waiting list: 'ok' or 'wait'. Invariant kept
-- with release_slot.lua: runs wait only while every slot is taken, in submission order.
-- KEYS: slots, waiting list
-- ARGV: execution id, max, now (ms)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return R.OK end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) and redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return R.OK
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return R.WAIT
