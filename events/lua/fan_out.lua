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
-- ARGV[1] 'claim': ARGV[2] host, ARGV[3] task id. Returns 'ok', 'cancel' or 'ended'.
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
if mode == 'claim' then
  if redis.call('HEXISTS', KEYS[2], F.COMPLETE_ID) == 1 then return R.ENDED end
  if redis.call('HEXISTS', k, 'r:' .. host) == 1 then return R.ENDED end
  if redis.call('HSETNX', k, 'c:' .. host, ARGV[3]) == 0 then return R.ENDED end
  if redis.call('HGET', KEYS[2], F.CANCEL_REQUESTED) == '1' then return R.CANCEL end
  return R.OK
end

-- 'end'
if redis.call('HSETNX', k, 'r:' .. host, ARGV[3]) == 0 then return {{}, {}, 0} end
redis.call('HINCRBY', k, 'ended', 1)
if ARGV[4] == '1' then redis.call('HINCRBY', k, 'failed', 1) end
if ARGV[5] == '1' then redis.call('HINCRBY', k, 'running', -1) end
local start, skip = take()
return {start, skip, over()}
