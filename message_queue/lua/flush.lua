-- For each channel: publish its open batch if its deadline has passed (by Redis server time).
-- KEYS: deadlines, stream, then per channel: msgs, state
-- ARGV: maxlen, by, then per channel: tag
-- Returns "<now>,<r1>,<r2>,..." (server ms), one r per channel: -1: published now; -2: no batch open (another
-- node published it, or it flushed when full); a deadline (> 0): not due yet (the deadline slid).
local deadlines, stream = KEYS[1], KEYS[2]
local maxlen, by = tonumber(ARGV[1]), ARGV[2]
local now = now_ms()
local out = {int(now)}
for i = 1, #ARGV - 2 do
  local tag, msgs, state = ARGV[2 + i], KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local deadline = redis.call('ZSCORE', deadlines, tag)
  if not deadline then
    out[i + 1] = '-2'
  else
    deadline = tonumber(deadline)
    if deadline > now then
      out[i + 1] = int(deadline)
    else
      flush(msgs, state, deadlines, stream, maxlen, tag, nil, deadline, now, by, nil, deadline)
      out[i + 1] = '-1'
    end
  end
end
return table.concat(out, ',')
