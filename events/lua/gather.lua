-- A fan-out step's start barrier (events/fan_out.py, FanOutStore.gather): one arrival of the
-- step's first `wave` hosts. The last to arrive puts one token per host of the wave, its own
-- included, in the list the arrivals then wait on; a run delivered again after its wave left
-- puts its own, so that it goes at once. The arrival and the wait are one round trip: this
-- script and BLPOP, pipelined.
-- KEYS: the counter of arrivals, the list of tokens. ARGV: the wave's size, the keys' ttl (s).
-- Returns how many have arrived, this one included.
local arrived = redis.call('INCR', KEYS[1])
local ttl = tonumber(ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
local wave = tonumber(ARGV[1])
if arrived >= wave then
  local tokens = {}
  for i = 1, (arrived == wave) and wave or 1 do tokens[i] = '1' end
  redis.call('RPUSH', KEYS[2], unpack(tokens))
  redis.call('EXPIRE', KEYS[2], ttl)
end
return arrived
