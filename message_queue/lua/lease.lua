-- Take or keep a lease: set KEYS[1] to ARGV[1] for ARGV[2] ms if it is free or already ours.
-- Returns 1 when the caller holds the lease, 0 when another holder does.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
