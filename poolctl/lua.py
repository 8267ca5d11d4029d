"""Lua scripts that make each multi-key Redis step atomic.

Redis runs a script to completion before any other command, so a script's
check (the caller still owns the lock, the pool has room) cannot go stale
before its write. Long argument lists go to commands in chunks because Lua's
unpack() has a stack limit (LUAI_MAXCSTACK, 8000 in Redis's Lua 5.1).
"""

from __future__ import annotations

# Shared helper, prepended to the scripts that push or remove many values.
_CHUNKED = """
local function chunked(command, key, first, last)
  local step = 1000
  for i = first, last, step do
    redis.call(command, key, unpack(ARGV, i, math.min(i + step - 1, last)))
  end
end
"""

# KEYS: lock, pool. ARGV: token, ttl_ms. Takes the lock if it is free and
# returns the pool's length read under the lock, or -1 when another owner has
# the lock. A length read before taking the lock may be stale, because another
# filler can fill the pool and release the lock in between.
ACQUIRE_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('LLEN', KEYS[2])
end
return -1
"""

# KEYS: lock. ARGV: token. Returns 1 when the caller owned the lock and removed it.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lock. ARGV: token, ttl_ms. Returns 1 when the caller owns the lock and its TTL was reset.
EXTEND_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock, claiming. ARGV: token, ttl_ms, id...
# Records ids a fill is about to commit as queued, so that a filler killed
# between its commit and its push leaves a trace reconcile can trust. Only the
# lock owner may record; returns 0 when the lock is not the caller's.
RECORD_CLAIM = (
    _CHUNKED
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
chunked('SADD', KEYS[2], 3, #ARGV)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# Counts n items in a rate counter. INCRBY returns n only on the key's first
# increment, so the TTL is set once per key and a busy pool pays one command.
_COUNT = """
local function count(key, n, ttl_s)
  if redis.call('INCRBY', key, n) == n then
    redis.call('EXPIRE', key, ttl_s)
  end
end
"""

# KEYS: pool, lock, claiming, filled counter.
# ARGV: token, ttl_ms, size, n, counter_ttl_s, id1..idn, item1..itemn
# Pushes the items in fill order (LPUSH, so RPOP returns the first one first),
# removes their ids from the claiming set, counts them in the filled counter and
# extends the lock. Returns the new pool length, -1 when the lock is not the
# caller's, or -2 when the items would take the pool past its size. On -1 and
# -2 nothing is written.
PUSH = (
    _CHUNKED
    + _COUNT
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
local n = tonumber(ARGV[4])
local length = redis.call('LLEN', KEYS[1])
if length + n > tonumber(ARGV[3]) then
  return -2
end
chunked('LPUSH', KEYS[1], 6 + n, 5 + 2 * n)
chunked('SREM', KEYS[3], 6, 5 + n)
count(KEYS[4], n, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return length + n
"""
)

# KEYS: pool, acks, dead, popped counter. ARGV: count, counter_ttl_s
# Pops up to count items and records each one's id in acks in the same step,
# so an item a poolctl consumer takes is never without its ack, and counts the
# items in the popped counter. Entries that are not {"id": <integer>, "text":
# <string>} go to the dead-letter list instead of to the caller.
# Returns {items, acks length, dead-lettered, pool length}.
POP = (
    _COUNT
    + """
local want = tonumber(ARGV[1])
local items, ids, bad = {}, {}, 0
while #items < want do
  local raw = redis.call('RPOP', KEYS[1], want - #items)
  if not raw then
    break
  end
  for _, value in ipairs(raw) do
    local ok, item = pcall(cjson.decode, value)
    local id = ok and type(item) == 'table' and item['id']
    if type(id) == 'number' and id >= 0 and id == math.floor(id) and id < 9007199254740992
        and type(item['text']) == 'string' then
      items[#items + 1] = value
      ids[#ids + 1] = string.format('%d', id)
    else
      redis.call('LPUSH', KEYS[3], value)
      bad = bad + 1
    end
  end
end
local acks
if #ids > 0 then
  acks = redis.call('LPUSH', KEYS[2], unpack(ids))
  count(KEYS[4], #ids, ARGV[2])
else
  acks = redis.call('LLEN', KEYS[2])
end
return {items, acks, bad, redis.call('LLEN', KEYS[1])}
"""
)

# KEYS: acks. ARGV: the ids an ack flush read from the tail, in LRANGE order.
# Removes exactly those ids after SQL has them as consumed. When another
# flusher got there first the tail differs, and ids are removed one by one.
# LREM cannot remove a newer ack, because an id is pushed to acks only by the
# pop that took its item, and a fill never queues an item twice.
TRIM_ACKS = """
local n = #ARGV
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local same = #tail == n
if same then
  for i = 1, n do
    if tail[i] ~= ARGV[i] then
      same = false
      break
    end
  end
end
if same then
  redis.call('LTRIM', KEYS[1], 0, -n - 1)
  return n
end
local removed = 0
for i = 1, n do
  removed = removed + redis.call('LREM', KEYS[1], -1, ARGV[i])
end
return removed
"""

# KEYS: any number of keys. Returns each one's LLEN, or -1 for a key that is
# not a list, in one command: far cheaper than one LLEN per key even pipelined.
LENGTHS = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.pcall('LLEN', key)
  if type(n) == 'table' then
    out[i] = -1
  else
    out[i] = n
  end
end
return out
"""
