-- Read channels' batching state in one step; writes nothing.
-- KEYS: msgs, state, held (of the one channel asked for), or: deadlines
-- ARGV: with a channel's keys: its tag. With the deadline index: the text before and after the tag in a
--       channel's msgs key, the same for its state key and for its held key, and the most channels to return;
--       the channels are then those of the index (every channel with an open batch), soonest deadline first.
-- Returns {tag, open batch size, seq, b, d, held, rf, do, tag, ...} (seq and b as in common.lua; d: the
-- duplicates dropped (see append.lua); held: the batches held while the channel is paused; rf: the messages
-- refused and do: those dropped by the channel's max_queued (see append.lua); 0 when absent).
local out = {}
local function read(tag, msgs, state, held)
  local v = redis.call('HMGET', state, 'seq', 'b', 'd', 'rf', 'do')
  local n = #out
  out[n + 1] = tag
  out[n + 2] = redis.call('LLEN', msgs)
  out[n + 3] = tonumber(v[1] or '0')
  out[n + 4] = tonumber(v[2] or '0')
  out[n + 5] = tonumber(v[3] or '0')
  out[n + 6] = redis.call('LLEN', held)
  out[n + 7] = tonumber(v[4] or '0')
  out[n + 8] = tonumber(v[5] or '0')
end
if #KEYS == 3 then
  read(ARGV[1], KEYS[1], KEYS[2], KEYS[3])
else
  for _, tag in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[7]) - 1)) do
    read(tag, ARGV[1] .. tag .. ARGV[2], ARGV[3] .. tag .. ARGV[4], ARGV[5] .. tag .. ARGV[6])
  end
end
return out
