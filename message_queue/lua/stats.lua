-- Read channels' batching state in one step; writes nothing.
-- KEYS: msgs, state (of the one channel asked for), or: deadlines
-- ARGV: with a channel's keys: its tag. With the deadline index: the text before and after the tag in a
--       channel's msgs key, the same for its state key, and the most channels to return; the channels are then
--       those of the index (every channel with an open batch), soonest deadline first.
-- Returns {tag, open batch size, seq, b, d, rf, do, tag, ...} (seq and b as in common.lua; d: the duplicates
-- dropped, rf: the messages refused and do: those dropped by the channel's max_queued (see append.lua); 0 when
-- absent).
local out = {}
local function read(tag, msgs, state)
  local v = redis.call('HMGET', state, 'seq', 'b', 'd', 'rf', 'do')
  local n = #out
  out[n + 1] = tag
  out[n + 2] = redis.call('LLEN', msgs)
  for i = 1, 5 do
    out[n + 2 + i] = tonumber(v[i] or '0')
  end
end
if #KEYS == 2 then
  read(ARGV[1], KEYS[1], KEYS[2])
else
  for _, tag in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)) do
    read(tag, ARGV[1] .. tag .. ARGV[2], ARGV[3] .. tag .. ARGV[4])
  end
end
return out
