-- Decide a batch (rules.lua) without writing anything: the publisher's MULTI/EXEC path runs
-- this right after WATCHing the executions' seq counters, then sends the events' XADD and
-- PUBLISH commands and the writes returned here in one transaction. Another publisher that
-- got in between changed a counter, so the EXEC fails and the batch is planned again.
-- KEYS: per execution its seq, history and record keys; then the stat key
-- ARGV: publisher field, cap, ttl, then per event: execution (1-based), output bytes,
--       complete ('1'), floor, batch number, number of record pairs, the pairs...
-- Returns {ids, marks, writes}: per event its id or DROPPED_* code and 1 if it hit the cap;
-- the commands to write back.
local pub_field, cap, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = (#KEYS - 1) / 3
local states = {}
for i = 1, n do states[i] = read_state(KEYS[3 * i - 2], KEYS[3 * i], pub_field) end
local ids, marks = {}, {}
local a = 4
while a <= #ARGV do
  local st = states[tonumber(ARGV[a])]
  local pairs_n = tonumber(ARGV[a + 5])
  local id, mark = decide(st, tonumber(ARGV[a + 1]), ARGV[a + 2] == '1', tonumber(ARGV[a + 4]),
    cap, tonumber(ARGV[a + 3]))
  ids[#ids + 1] = id
  marks[#marks + 1] = mark and 1 or 0
  if id > 0 then take_record(st, ARGV, a + 6, a + 5 + 2 * pairs_n) end
  a = a + 6 + 2 * pairs_n
end
local writes = {}
for i = 1, n do
  local cmds = state_writes(states[i], KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i], KEYS[#KEYS],
    pub_field, ttl)
  for _, cmd in ipairs(cmds) do writes[#writes + 1] = cmd end
end
return {ids, marks, writes}
