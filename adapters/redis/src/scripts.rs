//! The Lua scripts of the Redis SliceStore. Each touches the keys of one hash slot
//! only (one room's `dm:{room}:*` keys, one expiry-queue shard, or the batch
//! records), so each runs atomically on a Redis Cluster too. Slice keys are derived
//! inside the scripts from the room's key prefix (same slot as the declared keys).
//!
//! Numbers: Lua numbers are doubles, exact up to 2^53; seqs (Kafka offsets + 1) and
//! millisecond times stay far below. Integers are formatted with `%d` (Redis' Lua
//! 5.1 formats it as a 64-bit long).

/// Appends pre-grouped items to a room. KEYS: meta, idx, exp, bytes.
/// ARGV: prefix `dm:{room}:`, the high-water mark and newest slice (`<start>:<len>`,
/// or "" for none) the caller grouped the items against, hot retention ms, TTL of
/// `meta` in seconds (0 = none), the append time in ms ("" for none: see
/// `SliceStore::append_at`), then per slice, in order: slice id, highest seq,
/// item count n, bytes, and n (seq, member) pairs.
///
/// The caller ([`super::store::assign_slices`]) dropped items at or below the
/// room's high-water mark (`meta.last`: Bus redeliveries keep their seq) and
/// grouped the rest by the one slice rule (`SliceRef::assign`) against the room's
/// newest slice, `meta.head`: the newest slice ever written, kept after it is
/// claimed, so a late item never reopens an older slice (a room written before
/// `head` existed falls back to its newest live slice). If the room's mark or
/// newest slice is not what the caller saw (another writer, a restarted Redis),
/// nothing is written and the script answers {"stale", last, newest} for the
/// caller to regroup. Else each slice gets one multi-member ZADD; a room's slices
/// stay ordered and disjoint in seq, which makes cursor reads a walk over the
/// slice index (`idx`, score = the slice's highest seq). A slice not in the index
/// (a new one, or the newest one again after it was claimed) enters `exp`
/// (score = due time: its end plus the retention, at least the retention after the
/// append time, or 0 if the room was expedited up to its start) and bumps the
/// queue version `meta.qv`; a slice already queued that receives a late item is
/// moved back to the retention after the append (unless expedited, score 0). The retention is
/// remembered as `meta.ret` (when claimed slices expire). Returns {added, min
/// due (-1 = no slices; -2 = not computed, the queue shard is up to date), qv,
/// qc, {slice, members, bytes}...}.
pub const APPEND: &str = r#"
local prefix = ARGV[1]
local ret = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
local meta = redis.call('HMGET', KEYS[1], 'last', 'mark', 'qv', 'qc', 'head')
local last = meta[1] or '0'
local cur = meta[5]
if not cur then
  local top = redis.call('ZRANGE', KEYS[2], -1, -1)
  -- A claimed slice's index member names its batch too.
  cur = (string.gsub(top[1] or '', '^b:%d+:', ''))
end
if last ~= ARGV[2] or cur ~= ARGV[3] then
  return {'stale', last, cur}
end
local mark = meta[2] and tonumber(meta[2])
local qv = tonumber(meta[3] or '0')
local qc = tonumber(meta[4] or '0')
local created = false
local added = 0
local stats = {}
local i = 7
while i <= #ARGV do
  local id = ARGV[i]
  local hi = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  local nb = tonumber(ARGV[i + 3])
  i = i + 4
  if not redis.call('ZSCORE', KEYS[2], id) then
    local s, l = string.match(id, '^(%-?%d+):(%d+)$')
    s = tonumber(s)
    local due = s + tonumber(l) + ret
    if now and due < now + ret then due = now + ret end
    if mark and s <= mark then due = 0 end
    redis.call('ZADD', KEYS[3], string.format('%d', due), id)
    created = true
  elseif now then
    local d = redis.call('ZSCORE', KEYS[3], id)
    if d and tonumber(d) > 0 and tonumber(d) < now + ret then
      redis.call('ZADD', KEYS[3], string.format('%d', now + ret), id)
      created = true
    end
  end
  cur = id
  local key = prefix .. 's:' .. id
  local stop = i + 2 * n - 1
  -- One multi-member ZADD per slice (in chunks that fit Lua's stack).
  for j = i, stop, 2000 do
    redis.call('ZADD', key, unpack(ARGV, j, math.min(j + 1999, stop)))
  end
  i = stop + 1
  redis.call('ZADD', KEYS[2], hi, id)
  local b = redis.call('HINCRBY', KEYS[4], id, nb)
  stats[#stats + 1] = id
  stats[#stats + 1] = redis.call('ZCARD', key)
  stats[#stats + 1] = b
  added = added + n
  last = hi
end
if added > 0 then
  if created then
    qv = qv + 1
    redis.call('HSET', KEYS[1], 'last', last, 'head', cur, 'ret', ARGV[4], 'qv', string.format('%d', qv))
  else
    redis.call('HSET', KEYS[1], 'last', last, 'head', cur, 'ret', ARGV[4])
  end
  if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
end
local min_due = -2
if qv ~= qc then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  min_due = -1
  if first[2] then min_due = tonumber(first[2]) end
end
return {added, min_due, qv, qc, stats}
"#;

/// Items of a room after a seq, and the room's deleted ids (the caller leaves
/// those out). KEYS: idx, del. ARGV: prefix, after, limit. Returns {members, ids}.
/// Walks the slices whose highest seq is above `after`, in seq order, until
/// `limit` members are collected (the slices are seq-disjoint, see [`APPEND`]):
/// live ones (member `<start>:<len>`, key `s:<start>:<len>`) and claimed ones
/// (member and key `b:<batch>:<start>:<len>`) alike.
pub const READ_AFTER: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')
local limit = tonumber(ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local need = limit - #out
  if need <= 0 then break end
  local key = ARGV[1] .. 's:' .. id
  if string.sub(id, 1, 2) == 'b:' then key = ARGV[1] .. id end
  local r = redis.call('ZRANGEBYSCORE', key, '(' .. ARGV[2], '+inf', 'LIMIT', 0, need)
  for _, m in ipairs(r) do out[#out + 1] = m end
end
return {out, redis.call('ZRANGE', KEYS[2], 0, -1)}
"#;

/// Makes slices due now. KEYS: meta, exp. ARGV: up_to (or "inf" for every
/// slice), "1" to remember the mark (slices created later with a start at or
/// before it are due at once), TTL of `meta` in seconds.
/// Returns {min due or -1, qv, qc}.
pub const EXPEDITE: &str = r#"
local up = ARGV[1]
if ARGV[2] == '1' then
  local old = redis.call('HGET', KEYS[1], 'mark')
  if (not old) or tonumber(old) < tonumber(up) then
    redis.call('HSET', KEYS[1], 'mark', up)
  end
  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(0', '+inf')
local changed = 0
for _, id in ipairs(ids) do
  local s = tonumber(string.match(id, '^(%-?%d+):'))
  if up == 'inf' or s <= tonumber(up) then
    redis.call('ZADD', KEYS[2], 0, id)
    changed = changed + 1
  end
end
if changed > 0 then redis.call('HINCRBY', KEYS[1], 'qv', 1) end
local qv = tonumber(redis.call('HGET', KEYS[1], 'qv') or '0')
local qc = tonumber(redis.call('HGET', KEYS[1], 'qc') or '0')
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local min_due = -1
if first[2] then min_due = tonumber(first[2]) end
return {min_due, qv, qc}
"#;

/// Claims a room's due slices for a batch. KEYS: exp, idx, bytes, meta.
/// ARGV: prefix, batch id, now, max slices.
///
/// Idempotent per (room, batch): the first run renames each due slice
/// `dm:{room}:s:<slice>` to the batch-owned `dm:{room}:b:<batch>:<slice>` (a later
/// item for the same slice name starts a fresh key), replaces it in the room's
/// index by `b:<batch>:<slice>` with the same score (so its items stay readable),
/// and records the list under `dm:{room}:c:<batch>`; a rerun returns that list
/// and moves nothing more. Returns {min due or -1, qv, qc, {slice...}, the
/// earliest end of the claimed slices' hot retention (end + `meta.ret`) or -1}.
pub const CLAIM_ROOM: &str = r#"
local p = ARGV[1]
local ck = p .. 'c:' .. ARGV[2]
local moved = {}
local done = redis.call('GET', ck)
if done then
  for id in string.gmatch(done, '[^,]+') do moved[#moved + 1] = id end
else
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
  for _, id in ipairs(ids) do
    local src = p .. 's:' .. id
    local dst = 'b:' .. ARGV[2] .. ':' .. id
    local score = redis.call('ZSCORE', KEYS[2], id)
    if redis.call('EXISTS', src) == 1 then
      redis.call('RENAME', src, p .. dst)
      if score then redis.call('ZADD', KEYS[2], score, dst) end
    end
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    moved[#moved + 1] = id
  end
  if #moved > 0 then
    redis.call('SET', ck, table.concat(moved, ','))
    redis.call('HINCRBY', KEYS[4], 'qv', 1)
  end
end
local ret = tonumber(redis.call('HGET', KEYS[4], 'ret') or '0')
local hot = -1
for _, id in ipairs(moved) do
  local s, l = string.match(id, '^(%-?%d+):(%d+)$')
  if s then
    local u = tonumber(s) + tonumber(l) + ret
    if hot < 0 or u < hot then hot = u end
  end
end
local qv = tonumber(redis.call('HGET', KEYS[4], 'qv') or '0')
local qc = tonumber(redis.call('HGET', KEYS[4], 'qc') or '0')
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local min_due = -1
if first[2] then min_due = tonumber(first[2]) end
return {min_due, qv, qc, moved, hot}
"#;

/// Marks a batch's slices of one room archived: `c:<batch>` becomes
/// `a:<batch>` (idempotent). KEYS: `dm:{room}:c:<batch>`, `dm:{room}:a:<batch>`.
pub const ROOM_ARCHIVED: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
return 1
"#;

/// Deletes a room's claimed slices from the oldest on while each is archived
/// (`a:<batch>` exists) and past its hot retention (end + `meta.ret` <= now):
/// never one behind a slice still held, so a cursor read never skips a middle.
/// Drops the `a:<batch>` markers with no slice left. Raises `meta.gone` to the
/// highest seq deleted (`SliceStore::expired_through`). KEYS: idx, meta.
/// ARGV: prefix, now, batch. Returns {slices deleted, the earliest retention end
/// of `batch`'s slices still held here or -1}.
pub const ROOM_EXPIRE: &str = r#"
local p = ARGV[1]
local now = tonumber(ARGV[2])
local ret = tonumber(redis.call('HGET', KEYS[2], 'ret') or '0')
local through0 = tonumber(redis.call('HGET', KEYS[2], 'gone') or '0')
local through = through0
local removed = 0
local blocked = false
local emptied = {}
local left = {}
local mine = -1
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local b, s, l = string.match(m, '^b:(%d+):(%-?%d+):(%d+)$')
  local u = nil
  if b then u = tonumber(s) + tonumber(l) + ret end
  local gone = false
  if not blocked then
    if b and u <= now and redis.call('EXISTS', p .. 'a:' .. b) == 1 then
      redis.call('ZREM', KEYS[1], m)
      local top = redis.call('ZRANGE', p .. m, -1, -1, 'WITHSCORES')
      if top[2] and tonumber(top[2]) > through then through = tonumber(top[2]) end
      redis.call('DEL', p .. m)
      removed = removed + 1
      emptied[b] = true
      gone = true
    else
      blocked = true
    end
  end
  if b and not gone then
    left[b] = true
    if b == ARGV[3] and (mine < 0 or u < mine) then mine = u end
  end
end
for b, _ in pairs(emptied) do
  if not left[b] then redis.call('DEL', p .. 'a:' .. b) end
end
if through > through0 then redis.call('HSET', KEYS[2], 'gone', string.format('%d', through)) end
return {removed, mine}
"#;

/// The seq below a room's oldest item not archived (of a live slice, or of a
/// claimed one whose `c:<batch>` still exists), else `meta.last`. KEYS: idx, meta.
/// ARGV: prefix.
pub const ARCHIVED_THROUGH: &str = r#"
local p = ARGV[1]
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local b = string.match(m, '^b:(%d+):')
  local key = p .. 's:' .. m
  local pending = true
  if b then
    key = p .. m
    pending = redis.call('EXISTS', p .. 'c:' .. b) == 1
  end
  if pending then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then return tonumber(first[2]) - 1 end
  end
end
return tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
"#;

/// The queue state of a room. KEYS: exp, meta. Returns {min due or -1, qv, qc}.
pub const ROOM_STATE: &str = r#"
local qv = tonumber(redis.call('HGET', KEYS[2], 'qv') or '0')
local qc = tonumber(redis.call('HGET', KEYS[2], 'qc') or '0')
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local min_due = -1
if first[2] then min_due = tonumber(first[2]) end
return {min_due, qv, qc}
"#;

/// Records that the queue shard holds version `ARGV[1]` of the room. KEYS: meta.
pub const CONFIRM: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], 'qc') or '0') < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'qc', ARGV[1])
end
return 1
"#;

/// Sets a room's entry in its expiry-queue shard, fenced by the room's version so
/// that updates arriving out of order never undo a newer one (a stale update can
/// only re-add a room, which costs the archiver one empty visit; it can never drop
/// a room that has slices). KEYS: expiry shard, versions hash.
/// ARGV: room, min due (-1 = no slices: remove), version.
pub const QUEUE_UPDATE: &str = r#"
local v = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
local nv = tonumber(ARGV[3])
if nv < v then return 0 end
if tonumber(ARGV[2]) < 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 1
"#;

/// Opens a batch: a new id, its record (state "claiming" with the rooms it is
/// about to claim from), and its lease, in one step. KEYS: next, leases.
/// ARGV: record key prefix, lease until, record. Returns the id.
pub const BATCH_NEW: &str = r#"
local id = redis.call('INCR', KEYS[1])
redis.call('SET', ARGV[1] .. id, ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], id)
return id
"#;

/// Takes the oldest batch whose lease expired at `now`, renewing its lease.
/// KEYS: leases. ARGV: record key prefix, now, new lease end.
/// Returns {id, record} or nil.
pub const BATCH_EXPIRED: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1)
if not ids[1] then return false end
redis.call('ZADD', KEYS[1], ARGV[3], ids[1])
return {ids[1], redis.call('GET', ARGV[1] .. ids[1]) or ''}
"#;

/// Replaces a batch's record if the batch still exists. KEYS: leases.
/// ARGV: record key prefix, id, record. Returns 1 if replaced.
pub const BATCH_SET: &str = r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('SET', ARGV[1] .. ARGV[2], ARGV[3])
return 1
"#;

/// Extends a batch's lease if it is still leased. KEYS: leases. ARGV: id, new
/// lease end. Returns 1 if renewed.
pub const BATCH_RENEW: &str = r#"
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"#;

/// Last step of completing a batch (its rooms marked archived): it leaves the
/// completion list and waits in `kept` for its slices' retention to end.
/// KEYS: gc, kept. ARGV: id, earliest retention end.
pub const BATCH_KEEP: &str = r#"
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"#;

/// Forgets a batch whose slices all expired. KEYS: kept. ARGV: record key
/// prefix, id.
pub const BATCH_FORGET: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[1] .. ARGV[2])
return 1
"#;

/// Drops an empty batch. KEYS: leases. ARGV: record key prefix, id.
pub const BATCH_DROP: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[1] .. ARGV[2])
return 1
"#;

/// First step of completing a batch: it stops being leased (never handed out
/// again) and is listed as completing (its rooms are marked archived next, then
/// it moves to `kept`, see [`BATCH_KEEP`]). KEYS: leases, gc.
/// ARGV: record key prefix, id. Returns the record, or nil if it is gone.
pub const BATCH_COMPLETE: &str = r#"
local rec = redis.call('GET', ARGV[1] .. ARGV[2])
if not rec then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[2])
  return false
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
return rec
"#;

/// Sizes of a room's live (unclaimed) slices. KEYS: idx, bytes. ARGV: prefix.
/// Returns {slice, members, bytes, ...}.
pub const ROOM_SIZES: &str = r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(id, 1, 2) ~= 'b:' then
    out[#out + 1] = id
    out[#out + 1] = redis.call('ZCARD', ARGV[1] .. 's:' .. id)
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  end
end
return out
"#;

/// Type, length and memory of one key (the big-key scanner). KEYS: the key.
/// Returns {type, members, bytes}.
pub const INSPECT: &str = r#"
local t = redis.call('TYPE', KEYS[1])['ok']
local n = 0
if t == 'zset' then n = redis.call('ZCARD', KEYS[1])
elseif t == 'hash' then n = redis.call('HLEN', KEYS[1])
elseif t == 'set' then n = redis.call('SCARD', KEYS[1])
elseif t == 'list' then n = redis.call('LLEN', KEYS[1])
elseif t == 'stream' then n = redis.call('XLEN', KEYS[1])
elseif t == 'string' then n = 1
end
local b = 0
if t ~= 'none' then b = redis.call('MEMORY', 'USAGE', KEYS[1]) or 0 end
return {t, n, b}
"#;
