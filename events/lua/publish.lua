-- Publish one event (rules.lua decides): assign its id, append it to the history, publish it
-- on the execution's channel (and the all-executions one unless ARGV[5] is ''), update the
-- record. Atomic, so ids are contiguous whatever host publishes. Returns the id or a
-- DROPPED_* code.
-- KEYS: seq, history, record, stat
-- ARGV: head, tail, truncated field, channel, all channel, ttl, output bytes, cap,
--       complete ('1'), floor, publisher field, batch number, record field/value pairs...
local st = read_state(KEYS[1], KEYS[3], ARGV[11])
local id, mark = decide(st, tonumber(ARGV[7]), ARGV[9] == '1', tonumber(ARGV[12]),
  tonumber(ARGV[8]), tonumber(ARGV[10]))
if id > 0 then
  local tail = ARGV[2]
  -- The chunk that hits the cap says so at the end of its payload object (the tail ends with
  -- the payload's and the envelope's closing braces).
  if mark then tail = string.sub(tail, 1, -3) .. ARGV[3] .. '}}' end
  local env = ARGV[1] .. id .. tail
  redis.call('XADD', KEYS[2], id .. '-0', 'e', env)
  redis.call('PUBLISH', ARGV[4], env)
  if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], env) end
  take_record(st, ARGV, 13, #ARGV)
end
for _, cmd in ipairs(state_writes(st, KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[11],
    tonumber(ARGV[6]))) do
  redis.call(unpack(cmd))
end
return id
