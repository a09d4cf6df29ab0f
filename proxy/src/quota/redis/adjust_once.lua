-- Adjust once: adds to a counter unless this operation was applied already, so that a proxy may
-- resend a change whose answer it never saw (giving units back, FailOpen debt, charged tokens).
--
-- KEYS[1]  the counter (tollgate_crds::counter_store::counter_key)
-- KEYS[2]  the operation's record (op_record_key with a process-unique operation id)
-- ARGV[1]  the change in integer units; negative gives units back, never below 0
-- ARGV[2]  seconds for the counter to live after this write (EXPIRE)
-- ARGV[3]  seconds to remember that the operation was applied
--
-- Returns the counter's total (unchanged when the operation had been applied already).
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[3]) then
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta = tonumber(ARGV[1])
if used + delta < 0 then delta = -used end
used = redis.call('INCRBY', KEYS[1], delta)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return used
