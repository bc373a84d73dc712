-- Give a slot back and hand the free slots to the runs waiting longest; returns those runs
-- (the caller starts them, or releases them again if they were cancelled meanwhile). A run
-- that held no slot is only taken off the waiting list, so a double release promotes nobody.
-- KEYS: slots, waiting list
-- ARGV: execution id, max, now (ms)
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return {}
end
local promoted = {}
while redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) do
  local nxt = redis.call('LPOP', KEYS[2])
  if not nxt then break end
  redis.call('ZADD', KEYS[1], ARGV[3], nxt)
  table.insert(promoted, nxt)
end
return promoted
