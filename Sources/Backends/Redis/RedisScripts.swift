/// The Lua scripts behind every transition.
///
/// Why Lua and not MULTI/EXEC with WATCH: a transition reads a task's state and owner and writes it
/// conditionally; WATCH makes that optimistic (retry on conflict) and costs two round trips per
/// attempt, which under sixteen concurrent claimers of one batch means livelock-like retries. A script
/// runs atomically on the server, in one round trip, for a whole batch: one `EVALSHA` claims,
/// heartbeats or finishes hundreds of tasks, so Redis does a few commands per task and the network
/// one round trip per batch.
///
/// Every script works under one hash-tagged base key passed as `KEYS[1]` (`{prefix:queue}` or
/// `prefix:{session}`), so all keys it touches live in one Redis Cluster slot. Times come from the
/// caller (the injected `GridClock`) as seconds since 1970, never from the server's clock.
enum RedisScripts {
    // MARK: Queue

    /// ARGV: n, then n × (task id, priority, has payload "1"/"0", payload). Returns the last sequence number.
    static let enqueue = RedisScript(name: "queue.enqueue", source: """
        local q = KEYS[1]
        local n = tonumber(ARGV[1])
        local last = redis.call('INCRBY', q..':seq', n)
        local first = last - n + 1
        local seen = {}
        for i = 0, n - 1 do
          local id = first + i
          local b = 2 + i * 4
          local prio = ARGV[b + 1]
          local key = q..':m:'..id
          if ARGV[b + 2] == '1' then
            redis.call('HSET', key, 't', ARGV[b], 'p', prio, 'n', 0, 'd', ARGV[b + 3])
          else
            redis.call('HSET', key, 't', ARGV[b], 'p', prio, 'n', 0)
          end
          local ready = seen[prio]
          if not ready then
            ready = {}
            seen[prio] = ready
            redis.call('ZADD', q..':prios', prio, prio)
          end
          ready[#ready + 1] = id
          ready[#ready + 1] = id
        end
        for prio, ready in pairs(seen) do redis.call('ZADD', q..':ready:'..prio, unpack(ready)) end
        return last
        """)

    /// Makes due leased/delayed messages ready (keeping their FIFO position), then leases up to max.
    /// ARGV: now, lease expiry, max, order "h"/"l", token prefix (unique per call).
    /// Returns n × (message id, task id, priority, payload or nil, delivery count, token).
    ///
    /// Idempotent: the ids a call leased are kept for a minute under its token prefix, so a call sent
    /// again after a broken connection gets the same leases instead of hiding more messages.
    static let lease = RedisScript(name: "queue.lease", source: """
        local q = KEYS[1]
        local now = ARGV[1]
        local call = q..':call:'..ARGV[5]
        local prior = redis.call('LRANGE', call, 0, -1)
        if #prior > 0 then
          local out = {}
          for j, id in ipairs(prior) do
            local f = redis.call('HMGET', q..':m:'..id, 't', 'p', 'd', 'n', 'k')
            if f[1] and f[5] == ARGV[5]..j and redis.call('ZSCORE', q..':leased', id) then
              out[#out + 1] = id
              out[#out + 1] = f[1]
              out[#out + 1] = f[2]
              out[#out + 1] = f[3]
              out[#out + 1] = tonumber(f[4])
              out[#out + 1] = f[5]
            end
          end
          return out
        end
        for _, set in ipairs({':leased', ':delayed'}) do
          local due = redis.call('ZRANGEBYSCORE', q..set, '-inf', now, 'LIMIT', 0, 10000)
          for _, id in ipairs(due) do
            redis.call('ZREM', q..set, id)
            local prio = redis.call('HGET', q..':m:'..id, 'p')
            if prio then
              redis.call('ZADD', q..':ready:'..prio, id, id)
              redis.call('ZADD', q..':prios', prio, prio)
            end
          end
        end
        local max = tonumber(ARGV[3])
        local prios
        if ARGV[4] == 'h' then
          prios = redis.call('ZREVRANGE', q..':prios', 0, -1)
        else
          prios = redis.call('ZRANGE', q..':prios', 0, -1)
        end
        local out = {}
        local leased = {}
        local count = 0
        for _, prio in ipairs(prios) do
          if count >= max then break end
          local ready = q..':ready:'..prio
          local popped = redis.call('ZPOPMIN', ready, max - count)
          for j = 1, #popped, 2 do
            local id = popped[j]
            local key = q..':m:'..id
            local f = redis.call('HMGET', key, 't', 'p', 'd', 'n')
            if f[1] then
              count = count + 1
              local token = ARGV[5]..count
              local n = tonumber(f[4]) + 1
              redis.call('HSET', key, 'n', n, 'k', token)
              leased[#leased + 1] = ARGV[2]
              leased[#leased + 1] = id
              out[#out + 1] = id
              out[#out + 1] = f[1]
              out[#out + 1] = f[2]
              out[#out + 1] = f[3]
              out[#out + 1] = n
              out[#out + 1] = token
            end
          end
          if redis.call('ZCARD', ready) == 0 then redis.call('ZREM', q..':prios', prio) end
        end
        if #leased > 0 then
          redis.call('ZADD', q..':leased', unpack(leased))
          local ids = {}
          for j = 2, #leased, 2 do ids[#ids + 1] = leased[j] end
          redis.call('RPUSH', call, unpack(ids))
          redis.call('EXPIRE', call, 60)
        end
        return out
        """)

    /// ARGV: expiry, then pairs (message id, token). Returns the positions (1-based pairs) extended.
    static let extend = RedisScript(name: "queue.extend", source: """
        local q = KEYS[1]
        local out = {}
        for n = 2, #ARGV, 2 do
          local id = ARGV[n]
          if redis.call('ZSCORE', q..':leased', id) and redis.call('HGET', q..':m:'..id, 'k') == ARGV[n + 1] then
            redis.call('ZADD', q..':leased', ARGV[1], id)
            out[#out + 1] = n / 2
          end
        end
        return out
        """)

    /// ARGV: pairs (message id, token). Deletes the messages whose current lease these are.
    static let acknowledge = RedisScript(name: "queue.acknowledge", source: """
        local q = KEYS[1]
        local done = 0
        for n = 1, #ARGV, 2 do
          local id = ARGV[n]
          if redis.call('HGET', q..':m:'..id, 'k') == ARGV[n + 1] and redis.call('ZREM', q..':leased', id) == 1 then
            redis.call('DEL', q..':m:'..id)
            done = done + 1
          end
        end
        return done
        """)

    /// ARGV: visible-at ("" for now), then pairs (message id, token).
    static let release = RedisScript(name: "queue.release", source: """
        local q = KEYS[1]
        local done = 0
        for n = 2, #ARGV, 2 do
          local id = ARGV[n]
          if redis.call('HGET', q..':m:'..id, 'k') == ARGV[n + 1] and redis.call('ZREM', q..':leased', id) == 1 then
            if ARGV[1] == '' then
              local prio = redis.call('HGET', q..':m:'..id, 'p')
              redis.call('ZADD', q..':ready:'..prio, id, id)
              redis.call('ZADD', q..':prios', prio, prio)
            else
              redis.call('ZADD', q..':delayed', ARGV[1], id)
            end
            done = done + 1
          end
        end
        return done
        """)

    /// Returns triples (priority, waiting, in flight); delayed messages count as waiting.
    static let depth = RedisScript(name: "queue.depth", source: """
        local q = KEYS[1]
        local waiting, flight, seen = {}, {}, {}
        local order = {}
        local function note(p)
          if not seen[p] then seen[p] = true; order[#order + 1] = p; waiting[p] = 0; flight[p] = 0 end
        end
        for _, prio in ipairs(redis.call('ZRANGE', q..':prios', 0, -1)) do
          note(prio)
          waiting[prio] = waiting[prio] + redis.call('ZCARD', q..':ready:'..prio)
        end
        for _, set in ipairs({':leased', ':delayed'}) do
          for _, id in ipairs(redis.call('ZRANGE', q..set, 0, -1)) do
            local prio = redis.call('HGET', q..':m:'..id, 'p')
            if prio then
              note(prio)
              if set == ':leased' then flight[prio] = flight[prio] + 1 else waiting[prio] = waiting[prio] + 1 end
            end
          end
        end
        local out = {}
        for _, p in ipairs(order) do
          out[#out + 1] = p; out[#out + 1] = waiting[p]; out[#out + 1] = flight[p]
        end
        return out
        """)

    // MARK: State

    /// Helpers shared by the state scripts. KEYS[1] is the session's base key `prefix:{session}`.
    private static let prelude = """
        local base = KEYS[1]
        local function tkey(i) return base..':t:'..i end
        local function move(i, from, to)
          redis.call('ZREM', base..':state:'..from, i)
          redis.call('ZADD', base..':state:'..to, i, i)
        end
        local function afterFailure(i, k, msg, retryable, at)
          local f = redis.call('HMGET', k, 'r', 'm')
          local r = tonumber(f[1])
          local m = tonumber(f[2])
          redis.call('HDEL', k, 'o', 'l')
          redis.call('ZREM', base..':leases', i)
          if retryable and r < m then
            redis.call('HSET', k, 's', 'pending', 'r', r + 1, 'e', msg)
            move(i, 'processing', 'pending')
            return 'pending'
          end
          redis.call('HSET', k, 's', 'failed', 'c', at, 'e', msg)
          move(i, 'processing', 'failed')
          return 'failed'
        end
        local function live(s) return s == 'pending' or s == 'processing' end
        local function bulk(command, key, list)
          if #list > 0 then redis.call(command, key, unpack(list)) end
        end
        local function cancelOne(i, at)
          local k = tkey(i)
          local s = redis.call('HGET', k, 's')
          if not live(s) then return nil end
          redis.call('HSET', k, 's', 'cancelled', 'c', at)
          redis.call('HDEL', k, 'o', 'l')
          redis.call('ZREM', base..':leases', i)
          move(i, s, 'cancelled')
          return s
        end

        """

    /// ARGV: field/value pairs of the session hash. Returns 1 if created, 0 if it existed.
    static let createSession = RedisScript(name: "state.createSession", source: prelude + """
        if redis.call('EXISTS', base..':info') == 1 then return 0 end
        redis.call('HSET', base..':info', unpack(ARGV))
        return 1
        """)

    /// ARGV: count. Returns the new task count, -1 for an unknown session, -2 for a cancelled one.
    static let reserve = RedisScript(name: "state.reserve", source: prelude + """
        local info = base..':info'
        local c = redis.call('HGET', info, 'cancelled')
        if not c then return -1 end
        if c == '1' then return -2 end
        return redis.call('HINCRBY', info, 'count', ARGV[1])
        """)

    /// ARGV: groups (index, state, lease score or "", field count, fields…). Existing tasks are left alone.
    static let createTasks = RedisScript(name: "state.createTasks", source: prelude + """
        local n = 1
        local created = 0
        local byState = {}
        while n <= #ARGV do
          local i, s, lease, nf = ARGV[n], ARGV[n + 1], ARGV[n + 2], tonumber(ARGV[n + 3])
          local k = tkey(i)
          if redis.call('EXISTS', k) == 0 then
            local fields = {}
            for j = 1, nf do fields[j] = ARGV[n + 3 + j] end
            redis.call('HSET', k, unpack(fields))
            local list = byState[s]
            if not list then list = {}; byState[s] = list end
            list[#list + 1] = i
            list[#list + 1] = i
            if lease ~= '' then redis.call('ZADD', base..':leases', lease, i) end
            created = created + 1
          end
          n = n + 4 + nf
        end
        for s, list in pairs(byState) do bulk('ZADD', base..':state:'..s, list) end
        return created
        """)

    /// ARGV: owner, lease expiry, now, call token, indices…. Returns pairs (index, HGETALL of the
    /// claimed task).
    ///
    /// Idempotent: a task keeps the token of the call that claimed it (`ct`), so the same call sent
    /// again after a broken connection wins the tasks it had won; any other call does not.
    static let claim = RedisScript(name: "state.claim", source: prelude + """
        local owner, lease, now, call = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
        local out, won, processing, leases = {}, {}, {}, {}
        for n = 5, #ARGV do
          local i = ARGV[n]
          local k = tkey(i)
          local f = redis.call('HMGET', k, 's', 'o', 'ct')
          if (f[1] == 'pending' and not f[2]) or (f[1] == 'processing' and f[2] == owner and f[3] == call) then
            redis.call('HSET', k, 's', 'processing', 'o', owner, 'l', lease, 'st', now, 'ct', call)
            won[#won + 1] = i
            processing[#processing + 1] = i
            processing[#processing + 1] = i
            leases[#leases + 1] = lease
            leases[#leases + 1] = i
            out[#out + 1] = i
            out[#out + 1] = redis.call('HGETALL', k)
          end
        end
        bulk('ZREM', base..':state:pending', won)
        bulk('ZADD', base..':state:processing', processing)
        bulk('ZADD', base..':leases', leases)
        return out
        """)

    /// ARGV: owner, lease expiry, indices…. Returns the indices still owned.
    static let heartbeat = RedisScript(name: "state.heartbeat", source: prelude + """
        local owner, lease = ARGV[1], ARGV[2]
        local out = {}
        for n = 3, #ARGV do
          local i = ARGV[n]
          local k = tkey(i)
          local f = redis.call('HMGET', k, 's', 'o')
          if f[1] == 'processing' and f[2] == owner then
            redis.call('HSET', k, 'l', lease)
            redis.call('ZADD', base..':leases', lease, i)
            out[#out + 1] = i
          end
        end
        return out
        """)

    /// ARGV: owner, at, triples (index, has output "1"/"0", output). Returns the indices finished.
    static let finish = RedisScript(name: "state.finish", source: prelude + """
        local owner, at = ARGV[1], ARGV[2]
        local out, finished = {}, {}
        for n = 3, #ARGV, 3 do
          local i = ARGV[n]
          local k = tkey(i)
          local f = redis.call('HMGET', k, 's', 'o')
          if f[1] == 'processing' and f[2] == owner then
            if ARGV[n + 1] == '1' then
              redis.call('HDEL', k, 'o', 'l')
              redis.call('HSET', k, 's', 'finished', 'c', at, 'out', ARGV[n + 2])
            else
              redis.call('HDEL', k, 'o', 'l', 'out')
              redis.call('HSET', k, 's', 'finished', 'c', at)
            end
            finished[#finished + 1] = i
            finished[#finished + 1] = i
            out[#out + 1] = i
          end
        end
        bulk('ZREM', base..':leases', out)
        bulk('ZREM', base..':state:processing', out)
        bulk('ZADD', base..':state:finished', finished)
        return out
        """)

    /// ARGV: owner, at, triples (index, message, retryable "1"/"0"). Returns pairs (index, new state).
    static let fail = RedisScript(name: "state.fail", source: prelude + """
        local owner, at = ARGV[1], ARGV[2]
        local out = {}
        for n = 3, #ARGV, 3 do
          local i = ARGV[n]
          local k = tkey(i)
          local f = redis.call('HMGET', k, 's', 'o')
          if f[1] == 'processing' and f[2] == owner then
            out[#out + 1] = i
            out[#out + 1] = afterFailure(i, k, ARGV[n + 1], ARGV[n + 2] == '1', at)
          end
        end
        return out
        """)

    /// ARGV: now, indices…. Returns pairs (index, new state) of the tasks reaped.
    static let expire = RedisScript(name: "state.expire", source: prelude + """
        local now = ARGV[1]
        local out = {}
        for n = 2, #ARGV do
          local i = ARGV[n]
          local k = tkey(i)
          local f = redis.call('HMGET', k, 's', 'l')
          if f[1] == 'processing' and f[2] and tonumber(f[2]) < tonumber(now) then
            out[#out + 1] = i
            out[#out + 1] = afterFailure(i, k, 'lease expired', true, now)
          end
        end
        return out
        """)

    /// ARGV: at, pairs (index, message). Returns the indices failed.
    static let forceFail = RedisScript(name: "state.forceFail", source: prelude + """
        local at = ARGV[1]
        local out = {}
        for n = 2, #ARGV, 2 do
          local i = ARGV[n]
          local k = tkey(i)
          local s = redis.call('HGET', k, 's')
          if live(s) then
            redis.call('HSET', k, 's', 'failed', 'c', at, 'e', ARGV[n + 1])
            redis.call('HDEL', k, 'o', 'l')
            redis.call('ZREM', base..':leases', i)
            move(i, s, 'failed')
            out[#out + 1] = i
          end
        end
        return out
        """)

    /// ARGV: at, indices…. Returns {pending, processing} counts of the tasks cancelled.
    static let cancel = RedisScript(name: "state.cancel", source: prelude + """
        local p, r = 0, 0
        for n = 2, #ARGV do
          local s = cancelOne(ARGV[n], ARGV[1])
          if s == 'pending' then p = p + 1 elseif s == 'processing' then r = r + 1 end
        end
        return {p, r}
        """)

    /// ARGV: at. Marks the session cancelled and cancels its live tasks. Returns {pending, processing},
    /// or {-1} for an unknown session.
    static let cancelSession = RedisScript(name: "state.cancelSession", source: prelude + """
        local info = base..':info'
        if redis.call('EXISTS', info) == 0 then return {-1} end
        redis.call('HSET', info, 'cancelled', '1')
        local p, r = 0, 0
        for _, state in ipairs({'pending', 'processing'}) do
          for _, i in ipairs(redis.call('ZRANGE', base..':state:'..state, 0, -1)) do
            local s = cancelOne(i, ARGV[1])
            if s == 'pending' then p = p + 1 elseif s == 'processing' then r = r + 1 end
          end
        end
        return {p, r}
        """)

    /// ARGV: limit. Deletes up to `limit` task records of the session; once none is left, deletes the
    /// session's info and index keys too. Returns {removed, done (1/0)}, or {-1} for an unknown session.
    /// The caller repeats the call until done, so that no single call blocks Redis for long.
    static let deleteSession = RedisScript(name: "state.deleteSession", source: prelude + """
        local info = base..':info'
        if redis.call('EXISTS', info) == 0 then return {-1} end
        local limit = tonumber(ARGV[1])
        local removed = 0
        for _, state in ipairs({'pending', 'processing', 'finished', 'failed', 'cancelled'}) do
          local index = base..':state:'..state
          while removed < limit do
            local ids = redis.call('ZRANGE', index, 0, math.min(999, limit - removed - 1))
            if #ids == 0 then break end
            local keys = {}
            for j, i in ipairs(ids) do keys[j] = tkey(i) end
            redis.call('DEL', unpack(keys))
            redis.call('ZREM', index, unpack(ids))
            removed = removed + #ids
          end
        end
        if removed < limit then
          redis.call('DEL', info, base..':leases')
          return {removed, 1}
        end
        return {removed, 0}
        """)

    /// ARGV: state, lower bound (exclusive "(n" or "-inf"), count. Returns pairs (index, HGETALL).
    static let page = RedisScript(name: "state.page", source: prelude + """
        local out = {}
        for _, i in ipairs(redis.call('ZRANGEBYSCORE', base..':state:'..ARGV[1], ARGV[2], '+inf', 'LIMIT', 0, ARGV[3])) do
          out[#out + 1] = i
          out[#out + 1] = redis.call('HGETALL', tkey(i))
        end
        return out
        """)

    /// ARGV: now, limit. Returns pairs (index, HGETALL) of processing tasks whose lease is before now.
    static let expired = RedisScript(name: "state.expired", source: prelude + """
        local out = {}
        for _, i in ipairs(redis.call('ZRANGEBYSCORE', base..':leases', '-inf', '('..ARGV[1], 'LIMIT', 0, ARGV[2])) do
          out[#out + 1] = i
          out[#out + 1] = redis.call('HGETALL', tkey(i))
        end
        return out
        """)
}
