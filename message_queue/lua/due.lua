-- The channels whose deadline passed more than a grace period ago (their node may be gone).
-- KEYS: deadlines
-- ARGV: grace ms, limit[, the time now in ms (a test's fake clock; see common.lua)]
-- Returns {now, tag, tag, ...}, oldest deadline first.
local now = now_ms(3)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now - tonumber(ARGV[1])), 'LIMIT', 0,
                       tonumber(ARGV[2]))
table.insert(due, 1, now)
return due
