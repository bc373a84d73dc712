-- The publish rules, written once. publish.lua applies them to one event and writes it;
-- plan.lua applies them to a batch and returns what to write, for the publisher's MULTI/EXEC
-- path (events/batches.py), which then only adds the events' XADD and PUBLISH commands.
--
-- An execution's state: its last id (`seq`), whether it completed, output bytes used, whether
-- output was truncated, and this publisher's last batch number (`pub`), as read from its seq
-- counter and record; what changes is written back.

local DROPPED_COMPLETE = -1   -- the execution already completed: nothing after it
local DROPPED_TRUNCATED = -2  -- output past the cap, after the chunk that said so
local DROPPED_DUPLICATE = -3  -- a retried batch that went through already

local function read_state(seq_key, record_key, pub_field)
  local r = redis.call('HMGET', record_key, F.COMPLETE_ID, F.OUTPUT_BYTES, F.OUTPUT_TRUNCATED,
    pub_field)
  local st = {
    seq = tonumber(redis.call('GET', seq_key) or '0'),
    complete = r[1] ~= false,
    used = tonumber(r[2] or '0'),
    truncated = r[3] ~= false,
    pub = tonumber(r[4] or '0'),
    published = 0,
    complete_id = false,
    record = {},
  }
  st.used0, st.truncated0, st.pub0 = st.used, st.truncated, st.pub
  return st
end

-- One event: its id, or a DROPPED_* code; and whether it is the chunk that hit the output cap
-- (its payload then says `truncated: true`). `floor` is the publisher's last id for the
-- execution: after a Redis restart that lost the counter, ids go on from there.
local function decide(st, out_bytes, complete, local_n, cap, floor)
  if st.complete then return DROPPED_COMPLETE, false end
  if local_n > 0 then
    if local_n <= st.pub then return DROPPED_DUPLICATE, false end
    st.pub = local_n
  end
  local mark = false
  if out_bytes > 0 then
    st.used = st.used + out_bytes
    if st.used > cap then
      if st.truncated then return DROPPED_TRUNCATED, false end
      st.truncated = true
      mark = true
    end
  end
  if st.seq < floor then st.seq = floor end
  st.seq = st.seq + 1
  st.published = st.published + 1
  if complete then
    st.complete = true
    st.complete_id = st.seq
  end
  return st.seq, mark
end

-- An event went out: its own record fields (status, timestamps, a step's state) go with it.
local function take_record(st, argv, first, last)
  for i = first, last do st.record[#st.record + 1] = argv[i] end
end

-- The commands that write an execution's new state back. Every key of a published execution
-- lives `ttl` seconds after its last event.
local function state_writes(st, seq_key, history_key, record_key, stat_key, pub_field, ttl)
  local out = {}
  local fields = {}
  for _, v in ipairs(st.record) do fields[#fields + 1] = v end
  if st.used ~= st.used0 then
    fields[#fields + 1] = F.OUTPUT_BYTES
    fields[#fields + 1] = st.used
  end
  if st.truncated and not st.truncated0 then
    fields[#fields + 1] = F.OUTPUT_TRUNCATED
    fields[#fields + 1] = 1
  end
  if st.pub ~= st.pub0 then
    fields[#fields + 1] = pub_field
    fields[#fields + 1] = st.pub
  end
  if st.complete_id then
    fields[#fields + 1] = F.COMPLETE_ID
    fields[#fields + 1] = st.complete_id
  end
  if #fields > 0 then out[#out + 1] = {'HSET', record_key, unpack(fields)} end
  if st.published > 0 then
    out[#out + 1] = {'SET', seq_key, st.seq}
    out[#out + 1] = {'EXPIRE', seq_key, ttl}
    out[#out + 1] = {'EXPIRE', history_key, ttl}
    out[#out + 1] = {'EXPIRE', record_key, ttl}
    out[#out + 1] = {'INCRBY', stat_key, st.published}
  end
  return out
end
