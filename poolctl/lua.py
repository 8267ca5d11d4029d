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

# Shared helper: the id of a pool entry as a decimal string, or nil when the
# entry is not {"id": <integer>, "text": <string>}. It accepts exactly what
# poolctl.items.decode_item accepts, except for text that is not valid UTF-8,
# which cjson passes and Python rejects. The id must be written as plain
# digits, because cjson reads 1e3 and 1000.0 as the integer 1000 while Python
# and Go do not.
_ITEM_ID = """
local function item_id(value)
  local ok, item = pcall(cjson.decode, value)
  if not ok or type(item) ~= 'table' then
    return nil
  end
  local id = item['id']
  if type(id) ~= 'number' or id < 0 or id ~= math.floor(id) or id >= 9007199254740992
      or type(item['text']) ~= 'string' then
    return nil
  end
  local digits = string.format('%d', id)
  if not string.find(value, '"id"%s*:%s*' .. digits .. '%s*[,}]') then
    return nil
  end
  return digits
end
"""

# KEYS: lock, pool, claiming, sentinel. ARGV: token, ttl_ms.
# Takes the lock if it is free and returns, read under the lock, {pool length,
# size of the claiming set, 1 if the sentinel exists else 0}: a length read
# before the lock may be stale, because another filler can fill the pool and
# release in between. Returns -1 when another owner holds the lock. A pool or
# claiming key of the wrong type gives the lock back and fails with WRONGTYPE,
# so that a failed acquire never leaves a lock behind.
ACQUIRE_LOCK = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return -1
end
local length = redis.pcall('LLEN', KEYS[2])
local claims = redis.pcall('SCARD', KEYS[3])
if type(length) == 'table' or type(claims) == 'table' then
  redis.call('DEL', KEYS[1])
  return redis.error_reply('WRONGTYPE a key of this pool holds the wrong kind of value')
end
return {length, claims, redis.call('EXISTS', KEYS[4])}
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

# Shared helpers: a list of ids joined by "," as a table, and a command run
# on a table's values in chunks (see _CHUNKED).
_SPLIT = """
local function split_ids(joined)
  local ids = {}
  for id in string.gmatch(joined, '[^,]+') do
    ids[#ids + 1] = id
  end
  return ids
end
local function chunked_values(command, key, values)
  for i = 1, #values, 1000 do
    redis.call(command, key, unpack(values, i, math.min(i + 999, #values)))
  end
end
"""

# KEYS: lock, claiming. ARGV: token, ttl_ms, ids joined by ",".
# Records ids a fill is about to commit as queued, so that a filler killed
# between its commit and its push leaves a trace reconcile can trust. Only the
# lock owner may record; returns 0 when the lock is not the caller's.
RECORD_CLAIM = (
    _SPLIT
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
chunked_values('SADD', KEYS[2], split_ids(ARGV[3]))
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
# ARGV: token, ttl_ms, size, n, counter_ttl_s, ids joined by ",", then the n
# items.
# Pushes the items in fill order (LPUSH, so RPOP returns the first one first),
# removes their ids from the claiming set, counts them in the filled counter and
# extends the lock. Returns the new pool length, -1 when the lock is not the
# caller's, or -2 when the items would take the pool past its size. On -1 and
# -2 nothing is written. The items go to LPUSH straight from ARGV: every copy
# of a batch of long texts inside the script costs Redis milliseconds.
PUSH = (
    _CHUNKED
    + _SPLIT
    + _COUNT
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return -1
end
local n = tonumber(ARGV[4])
if #ARGV ~= 6 + n then
  return redis.error_reply('PUSH: expected ' .. n .. ' items, got ' .. (#ARGV - 6))
end
local length = redis.call('LLEN', KEYS[1])
if length + n > tonumber(ARGV[3]) then
  return -2
end
chunked('LPUSH', KEYS[1], 7, 6 + n)
chunked_values('SREM', KEYS[3], split_ids(ARGV[6]))
count(KEYS[4], n, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return length + n
"""
)

# Shared helper: the id of an entry in the exact form poolctl writes,
# {"id":<digits>,"text":"..."}, or nil. A cheap check instead of a JSON parse:
# what passes it still goes through Python's parser, which checks the id
# again and sets aside what is not valid JSON (SET_ASIDE).
_QUICK_ID = """
local function quick_id(value)
  local _, last = string.find(value, '^{"id":[1-9]%d*,"text":"')
  if last and last <= 30 and string.byte(value, -1) == 125 and string.byte(value, -2) == 34 then
    return string.sub(value, 7, last - 9)
  end
  return nil
end
"""

# KEYS: pool, acks, dead, acks_since, popped counter. ARGV: count, now_ms, counter_ttl_s
# Pops up to count items and records each one's id in acks in the same step,
# so an item a poolctl consumer takes is never without its ack, and counts the
# items in the popped counter. Entries that are not valid items go to the
# dead-letter list instead of to the caller, and so do entries with a raw
# newline, which valid JSON never has. When acks was empty before, acks_since
# gets now_ms, so that an audit can tell how long acks have waited for a flush.
# Returns one string, "acks length|dead-lettered|ids joined by ,|items joined
# by newlines": one bulk reply whatever the count, which the caller splits at
# the first three "|" and parses with one json.loads.
POP = (
    _ITEM_ID
    + _QUICK_ID
    + _COUNT
    + """
local want = tonumber(ARGV[1])
local items, ids, bad = {}, {}, 0
while #items < want do
  local raw = redis.call('RPOP', KEYS[1], want - #items)
  if not raw then
    break
  end
  for _, value in ipairs(raw) do
    local id = quick_id(value) or item_id(value)
    if id and not string.find(value, '\\n', 1, true) then
      items[#items + 1] = value
      ids[#ids + 1] = id
    else
      redis.call('LPUSH', KEYS[3], value)
      bad = bad + 1
    end
  end
end
local acks
if #ids > 0 then
  for i = 1, #ids, 1000 do
    acks = redis.call('LPUSH', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  end
  if acks == #ids then
    redis.call('SET', KEYS[4], ARGV[2])
  end
  count(KEYS[5], #ids, ARGV[3])
else
  acks = redis.call('LLEN', KEYS[2])
end
return acks .. '|' .. bad .. '|' .. table.concat(ids, ',') .. '|' .. table.concat(items, '\\n')
"""
)

# KEYS: acks, dead. ARGV: id, entry
# Sets aside a popped entry that Python could not decode although POP
# accepted it: its ack is removed, so that the row is not marked consumed for
# an item no consumer received, and the entry goes to the dead-letter list.
SET_ASIDE = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""

# KEYS: acks. ARGV: limit.
# Reads up to limit of the oldest acks (the tail, in LRANGE order). Returns
# them joined by "," as one string when each is plain digits, as they always
# are unless someone wrote to the list by hand, else as a list.
READ_ACKS = """
local tail = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
for _, value in ipairs(tail) do
  if not string.match(value, '^%d+$') then
    return tail
  end
end
return table.concat(tail, ',')
"""

# Shared helper of the ack trims, which remove the ids an ack flush read from
# the tail of acks after SQL has them as consumed. In the common case the
# tail is unchanged and one LTRIM removes them. When another flusher removed
# some of them first, the ids still there are all among the last n entries
# (tail, read again by the trim), because acks grows only at the head (LPUSH):
# no entry is ever added behind them. remove_from_tail then rebuilds those
# entries without the ids, nearest the tail first as LREM with a count of -1
# would, in time linear in n. One LREM per id would scan the whole list for
# every id already gone, and block Redis for seconds behind a backlog of
# 100,000 acks. A removed entry cannot be a newer ack: only the pop that took
# an item pushes its id to acks. And reconcile queues an item again only
# after it found the item in no pool and no acks list. Afterwards acks_since
# is now_ms, or gone when acks is empty.
_REMOVE_FROM_TAIL = """
local function remove_from_tail(acks, tail, ids)
  local to_remove = {}
  for _, id in ipairs(ids) do
    to_remove[id] = (to_remove[id] or 0) + 1
  end
  local remaining, removed = {}, 0  -- remaining: nearest the tail first
  for i = #tail, 1, -1 do
    local left = to_remove[tail[i]]
    if left and left > 0 then
      to_remove[tail[i]] = left - 1
      removed = removed + 1
    else
      remaining[#remaining + 1] = tail[i]
    end
  end
  if removed > 0 then
    redis.call('LTRIM', acks, 0, -#tail - 1)
    local back = {}
    for i = #remaining, 1, -1 do
      back[#back + 1] = remaining[i]
    end
    for i = 1, #back, 1000 do
      redis.call('RPUSH', acks, unpack(back, i, math.min(i + 999, #back)))
    end
  end
  return removed
end
local function stamp_acks_since(acks, acks_since, now_ms)
  if redis.call('LLEN', acks) == 0 then
    redis.call('DEL', acks_since)
  else
    redis.call('SET', acks_since, now_ms)
  end
end
"""

# KEYS: acks, acks_since. ARGV: now_ms, n, the n ids an ack flush read from
# the tail joined by ",". The same as TRIM_ACKS for ids that READ_ACKS
# returned joined, without one argument per id.
TRIM_JOINED_ACKS = (
    _SPLIT
    + _REMOVE_FROM_TAIL
    + """
local n = tonumber(ARGV[2])
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local removed = n
if #tail == n and table.concat(tail, ',') == ARGV[3] then
  redis.call('LTRIM', KEYS[1], 0, -n - 1)
else
  removed = remove_from_tail(KEYS[1], tail, split_ids(ARGV[3]))
end
stamp_acks_since(KEYS[1], KEYS[2], ARGV[1])
return removed
"""
)

# KEYS: acks, acks_since. ARGV: now_ms, then the ids an ack flush read from
# the tail, in LRANGE order. Removes exactly those ids, as TRIM_JOINED_ACKS does.
TRIM_ACKS = (
    _REMOVE_FROM_TAIL
    + """
local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local n = #ids
local tail = redis.call('LRANGE', KEYS[1], -n, -1)
local same = #tail == n
for i = 1, n do
  if not same then
    break
  end
  same = tail[i] == ids[i]
end
local removed = n
if same then
  redis.call('LTRIM', KEYS[1], 0, -n - 1)
else
  removed = remove_from_tail(KEYS[1], tail, ids)
end
stamp_acks_since(KEYS[1], KEYS[2], ARGV[1])
return removed
"""
)

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

# KEYS: lock, pool, acks, claiming, sentinel. ARGV: token, ttl_ms
# Reads a pool's state in one step, so that no pop can move an item from the
# pool to acks between the reads: {pool ids, acks, claiming ids, entries that
# are not valid items, 1 if the sentinel exists else 0}. Pool ids come in
# list order and keep duplicates. With a token, the read happens only while the
# caller owns the lock (which it extends); -1 otherwise. An empty token reads
# without a lock, for the audit.
#
# Entries that start the way poolctl writes them ({"id":N,"text":") are read
# by that prefix alone: decoding every 9 KB body of a full pool would block
# Redis for a noticeable time. Other entries are fully decoded.
READ_POOL = (
    _ITEM_ID
    + """
if ARGV[1] ~= '' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return -1
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local ids, malformed = {}, 0
local length = redis.call('LLEN', KEYS[2])
local step = 200
for first = 0, length - 1, step do
  for _, value in ipairs(redis.call('LRANGE', KEYS[2], first, first + step - 1)) do
    local id = string.match(value, '^{"id":(%d+),"text":"')
    if not id then
      id = item_id(value)
    end
    if id then
      ids[#ids + 1] = id
    else
      malformed = malformed + 1
    end
  end
end
return {ids, redis.call('LRANGE', KEYS[3], 0, -1), redis.call('SMEMBERS', KEYS[4]), malformed,
        redis.call('EXISTS', KEYS[5])}
"""
)

# KEYS: lock, claiming. ARGV: token, ttl_ms, id...
# Removes ids from the claiming set and extends the lock, only while the
# caller owns the lock. Returns 1, or 0 when the lock is not the caller's.
FORGET_CLAIMS = (
    _CHUNKED
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if #ARGV >= 3 then
  chunked('SREM', KEYS[2], 3, #ARGV)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
)

# KEYS: lock, sentinel. ARGV: token
# Marks the pool as reconciled since Redis last lost its data, only while the
# caller owns the lock. Returns 1, or 0 when the lock is not the caller's.
SET_SENTINEL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
