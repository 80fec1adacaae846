-- Shared by the batching scripts (prepended to each one's source; nothing here comes from input).
--
-- Per channel (keys named by protocol.keys.dist_key, all in the channel's hash slot):
--   msgs  (list)  codec frames of the open batch's messages, oldest first
--   state (hash)  o: the open batch, "<first ms>:<window ms>:<max_wait ms, 0: none>:<cap>" (its settings are
--                 fixed when it opens); l: time of its last message (ms; kept only when max_wait is set,
--                 otherwise it is the deadline minus the window); ch: the channel id; seq: number of batches
--                 published for the channel (ch and seq outlive the batch)
-- Shared: the deadline index (sorted set: channel tag -> deadline, ms) and the stream.
-- Every time is Redis server time (TIME) in ms, so the nodes' clocks do not matter.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end

local function u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256)
end

-- A codec datetime at ms precision: [seconds, microseconds, UTC offset 0], i.e. an aware UTC datetime.
local function stamp(ms)
  return '\147\206' .. u32(math.floor(ms / 1000)) .. '\206' .. u32((ms % 1000) * 1000) .. '\0'
end

-- A codec MessageBatch frame ["batch", [message frames...], first_at, last_at] around stored message frames.
local function batch_frame(frames, first, last)
  local n = #frames
  local header
  if n < 16 then
    header = string.char(144 + n)
  else
    header = '\220' .. string.char(math.floor(n / 256) % 256, n % 256)
  end
  return '\148\165batch' .. header .. table.concat(frames) .. stamp(first) .. stamp(last)
end

-- Append one finished batch to the stream under the channel's next batch id "<tag>:<seq>".
local function publish(state, stream, maxlen, tag, channel, reason, count, payload, deadline, now, by)
  local seq = redis.call('HINCRBY', state, 'seq', 1)
  local id = tag .. ':' .. int(seq)
  local fields = {'id', id, 'channel', channel, 'seq', int(seq), 'reason', reason, 'count', int(count),
                  'deadline', int(deadline), 'published', int(now), 'by', by, 'batch', payload}
  if maxlen > 0 then
    redis.call('XADD', stream, 'MAXLEN', '~', int(maxlen), '*', unpack(fields))
  else
    redis.call('XADD', stream, '*', unpack(fields))
  end
  return id
end

-- The open batch "o" of a state hash as numbers: first (ms), window, max_wait (ms), cap; nil if none.
local function parse_open(o)
  if not o then
    return nil
  end
  local first, w, mw, cap = string.match(o, '^(%d+):(%d+):(%d+):(%d+)$')
  return {first = tonumber(first), w = tonumber(w), mw = tonumber(mw), cap = tonumber(cap)}
end

-- Close the open batch (if any) and publish it, in one step: claim and publish cannot be separated.
-- ``reason`` nil: "window", or "max_wait" when the deadline was the batch's age cap. ``last``: the time of its
-- last message when known (nil: stored, or the deadline minus the window). ``score``: its deadline when the
-- caller read it (nil: read here). Returns the batch id, or nil when no batch was open.
local function flush(msgs, state, deadlines, stream, maxlen, tag, reason, deadline, now, by, last, score)
  if score == nil then
    score = redis.call('ZSCORE', deadlines, tag)
    score = score and tonumber(score)
  end
  if score then
    redis.call('ZREM', deadlines, tag)
  end
  local frames = redis.call('LRANGE', msgs, 0, -1)
  if #frames == 0 then
    return nil
  end
  local v = redis.call('HMGET', state, 'o', 'ch', 'l')
  local o = parse_open(v[1]) or {first = now, w = 0, mw = 0, cap = 0}
  if not reason then
    reason = 'window'
    if o.mw > 0 and score == o.first + o.mw then
      reason = 'max_wait'
    end
  end
  if not last then
    if o.mw > 0 and v[3] then
      last = tonumber(v[3])
    elseif score then
      last = score - o.w
    else
      last = now
    end
  end
  if last < o.first then
    last = o.first
  end
  local id = publish(state, stream, maxlen, tag, v[2] or '', reason, #frames, batch_frame(frames, o.first, last),
                     deadline, now, by)
  redis.call('DEL', msgs)
  redis.call('HDEL', state, 'o', 'l')
  return id
end
