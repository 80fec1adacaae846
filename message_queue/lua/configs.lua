-- Read the per-channel settings hashes (message_queue:config:<channel>) of several channels at once.
-- KEYS: the settings hashes
-- Returns {window, disabled, window, disabled, ...}, a nil (false) for each missing field.
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'window', 'disabled')
  out[2 * i - 1] = v[1]
  out[2 * i] = v[2]
end
return out
