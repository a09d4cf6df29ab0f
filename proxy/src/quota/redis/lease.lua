-- Lease: grants a slice of a counter's remaining allowance, for a proxy to spend locally.
--
-- KEYS[1]  the counter (tollgate_crds::counter_store::counter_key or rate_window_key)
-- KEYS[2]  optional: where to record the grant (op_record_key), so that a proxy whose call went
--          unanswered can ask whether it was applied
-- ARGV[1]  the limit (integer units)
-- ARGV[2]  seconds for the counter to live after this write (EXPIRE, never EXPIREAT: Redis's
--          clock only counts the lifetime down; see time_to_live in mod.rs)
-- ARGV[3]  'slice': a slice of 1/64 of what remains, between 1 and 1000 units; a number N:
--          exactly N units (a call's reservation, or one unit), or nothing when N do not fit
-- ARGV[4]  seconds to keep the record in KEYS[2]
--
-- Returns {grant, total}: the units granted (0 when nothing remains or N do not fit) and the
-- counter's total after the grant. Never grants past the limit, so the fleet never admits more
-- than it.
local limit = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local remaining = limit - used
if remaining <= 0 then return {0, used} end
local grant
if ARGV[3] == 'slice' then
  grant = math.floor(remaining / 64)
  if grant < 1 then grant = 1 end
  if grant > 1000 then grant = 1000 end
else
  grant = tonumber(ARGV[3])
  if grant > remaining then return {0, used} end
end
used = redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], ARGV[2])
if KEYS[2] then redis.call('SET', KEYS[2], grant, 'EX', ARGV[4]) end
return {grant, used}
