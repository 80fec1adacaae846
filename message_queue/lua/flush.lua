-- For each channel: publish its open batch if its deadline has passed (by Redis server time); a paused
-- channel holds it instead (see common.lua).
-- KEYS: deadlines, stream, seq floor, then per channel: msgs, state, config, held
-- ARGV: maxlen, by, idle ttl ms (of a channel's state), then per channel: tag, [then the time now in ms (a
--       test's fake clock; see common.lua)]
-- Returns "<now>,<r1>,<r2>,..." (server ms), one r per channel: -1: published (or held) now; -2: no batch open
-- (another node published it, or it flushed when full); a deadline (> 0): not due yet (the deadline slid).
local deadlines, stream, floor = KEYS[1], KEYS[2], KEYS[3]
local maxlen, by, idle = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local count = (#KEYS - 3) / 4
local now = now_ms(3 + count + 1)
local out = {int(now)}
for i = 1, count do
  local tag, msgs, state = ARGV[3 + i], KEYS[4 * i], KEYS[4 * i + 1]
  local hold = {KEYS[4 * i + 2], KEYS[4 * i + 3]}
  local deadline = redis.call('ZSCORE', deadlines, tag)
  if not deadline then
    out[i + 1] = '-2'
  else
    deadline = tonumber(deadline)
    if deadline > now then
      out[i + 1] = int(deadline)
    else
      local _, seq = flush(hold, msgs, state, floor, deadlines, stream, maxlen, tag, nil, deadline, now, by, nil,
                           deadline)
      rest(state, floor, seq, idle)
      out[i + 1] = '-1'
    end
  end
end
return table.concat(out, ',')
