-- A fan-out step's hosts (worker/playbook/fanout.py): which host starts next, and who ended
-- last. One script, so that every host's end is counted once, `parallel` and `max_failures`
-- are applied by one rule, and exactly one caller learns that the step is over (it then
-- publishes the step's completion and hands off, as a single step does).
-- Hash fields: order (JSON list of the hosts to start, in order), next (how many of them were
-- taken), running, failed, ended, total, parallel (0: all at once), maxFailures ('' none),
-- r:<host> (its result, JSON), c:<host> (the task that claimed its run).
-- KEYS: the step's fan-out hash, the execution's record
-- ARGV[1] 'init': ARGV[2] order, ARGV[3] parallel, ARGV[4] max failures, ARGV[5] the hosts
--   that failed before starting (offline: JSON host -> result), ARGV[6] ttl (s), ARGV[7] step
--   number. Returns {start, skip, last}.
-- ARGV[1] 'claim' (KEYS[3]: the host's lease): ARGV[2] host, ARGV[3] task id, ARGV[4] the
--   lease's ttl (s). Returns {'ok' | 'cancel' | 'ended', the record's spec, the size of the
--   first wave when the host is in it, else 0}: what a host's run needs before its command, in
--   the round trip that claims it (each one more spread a step's starts on a loaded machine).
-- ARGV[1] 'end': ARGV[2] host, ARGV[3] result, ARGV[4] '1' when it failed, ARGV[5] '1' when its
--   run was started (it held a place in `parallel`). Returns {start, skip, last}.
local k = KEYS[1]
local mode = ARGV[1]

local function num(field) return tonumber(redis.call('HGET', k, field) or '0') end

-- Take hosts while `parallel` allows; once more than maxFailures failed, the hosts not started
-- are handed back to be ended `skipped` (each then comes back through 'end').
local function take()
  local order = cjson.decode(redis.call('HGET', k, 'order'))
  local nxt, running, failed = num('next'), num('running'), num('failed')
  local parallel = num('parallel')
  local maxf = redis.call('HGET', k, 'maxFailures')
  local start, skip = {}, {}
  while nxt < #order do
    nxt = nxt + 1
    if maxf ~= '' and failed > tonumber(maxf) then
      skip[#skip + 1] = order[nxt]
    elseif parallel == 0 or running < parallel then
      running = running + 1
      start[#start + 1] = order[nxt]
    else
      nxt = nxt - 1
      break
    end
  end
  redis.call('HSET', k, 'next', nxt, 'running', running)
  return start, skip
end

local function over()
  if num('ended') < num('total') or redis.call('HSETNX', k, 'done', '1') == 0 then return 0 end
  redis.call('HDEL', KEYS[2], F.FAN_OUT)
  return 1
end

if mode == 'init' then
  if redis.call('HSETNX', k, 'order', ARGV[2]) == 0 then return {{}, {}, 0} end
  local offline = 0
  for h, r in pairs(cjson.decode(ARGV[5])) do
    redis.call('HSET', k, 'r:' .. h, r)
    offline = offline + 1
  end
  redis.call('HSET', k, 'next', 0, 'running', 0, 'failed', offline, 'ended', offline,
    'total', #cjson.decode(ARGV[2]) + offline, 'parallel', ARGV[3], 'maxFailures', ARGV[4])
  redis.call('EXPIRE', k, tonumber(ARGV[6]))
  redis.call('HSET', KEYS[2], F.FAN_OUT, ARGV[7])
  local start, skip = take()
  return {start, skip, over()}
end

local host = ARGV[2]
-- The hosts the step starts at once (all, or the first `parallel`): how many when `host` is
-- one of them, else 0.
local function wave_of(h)
  local order = cjson.decode(redis.call('HGET', k, 'order') or '[]')
  local n = num('parallel')
  if n == 0 or n > #order then n = #order end
  for i = 1, n do
    if order[i] == h then return n end
  end
  return 0
end

if mode == 'claim' then
  if redis.call('HEXISTS', KEYS[2], F.COMPLETE_ID) == 1 then return {R.ENDED, false, 0} end
  if redis.call('HEXISTS', k, 'r:' .. host) == 1 then return {R.ENDED, false, 0} end
  if redis.call('HSETNX', k, 'c:' .. host, ARGV[3]) == 0 then return {R.ENDED, false, 0} end
  redis.call('SET', KEYS[3], host, 'EX', tonumber(ARGV[4]))
  local spec = redis.call('HGET', KEYS[2], F.SPEC)
  if redis.call('HGET', KEYS[2], F.CANCEL_REQUESTED) == '1' then return {R.CANCEL, spec, 0} end
  return {R.OK, spec, wave_of(host)}
end

-- 'end'
if redis.call('HSETNX', k, 'r:' .. host, ARGV[3]) == 0 then return {{}, {}, 0} end
redis.call('HINCRBY', k, 'ended', 1)
if ARGV[4] == '1' then redis.call('HINCRBY', k, 'failed', 1) end
if ARGV[5] == '1' then redis.call('HINCRBY', k, 'running', -1) end
local start, skip = take()
return {start, skip, over()}
