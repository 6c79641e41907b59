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
        redis.call('PUBLISH', q..':arrivals', n)
        return last
        """)

    /// Makes due leased/delayed messages ready (keeping their FIFO position), then leases up to max.
    /// ARGV: now, lease expiry, max, order "h"/"l", token prefix (unique per call).
    /// Returns n × (message id, task id, priority, payload or nil, delivery count, token); when it leased
    /// nothing, {due} instead: the earliest time (text) a leased or delayed message becomes ready again,
    /// or {} when there is none, so that a waiting caller knows when to look again without a message.
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
        if #out == 0 then
          local due
          for _, set in ipairs({':leased', ':delayed'}) do
            local first = redis.call('ZRANGE', q..set, 0, 0, 'WITHSCORES')
            if first[2] and (not due or tonumber(first[2]) < tonumber(due)) then due = first[2] end
          end
          if due then return {due} end
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
        if done > 0 and ARGV[1] == '' then redis.call('PUBLISH', q..':arrivals', done) end
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
    ///
    /// A task record is one string, a MessagePack array (``RedisTaskCodec``): `load` and `save` turn it
    /// into a Lua table and back with Redis' `cmsgpack`; `false` marks an absent value. Positions:
    /// S state, O owner, L lease expiry, R retries, M max retries, E last error, C completed, ST
    /// started, OUT output, CT claim token, A attempt, Q completion number. Each transition translates
    /// one rule of GridKernel's TaskRules.swift; `held` is its fencing: processing, same owner, same
    /// attempt.
    ///
    /// Counters and completion order, kept by the same script as the transition (so exact whatever
    /// crashes or is repeated): `counts` is a hash of tasks per state plus the marker `counted`;
    /// `order` is the list of task indices in completion order, so its length is the last completion
    /// number and the task numbered n is at position n − 1. `tally` notes a move between states,
    /// `number` gives a task that just became terminal the next number; `commit` writes both at the
    /// end of the script (one `HINCRBY` per state changed, one `RPUSH` per 1,000 tasks) and publishes
    /// the last number on the channel `base:done` once. `upgrade` counts and numbers a session that
    /// the previous version wrote (no `counted` marker): every transition script calls it first.
    private static let prelude = """
        local base = KEYS[1]
        local S, O, L, R, M, ST, C, E, OUT, CT, A, Q = 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15
        local STATES = {'pending', 'processing', 'finished', 'failed', 'cancelled'}
        local counts, order = base..':counts', base..':order'
        local function tkey(i) return base..':t:'..i end
        local function load(i)
          local v = redis.call('GET', tkey(i))
          if not v then return nil end
          return cmsgpack.unpack(v)
        end
        local function save(i, t)
          local v = cmsgpack.pack(t)
          redis.call('SET', tkey(i), v)
          return v
        end
        local function terminal(s) return s == 'finished' or s == 'failed' or s == 'cancelled' end
        local delta, numbered, last = {}, {}, nil
        local function tally(from, to, n)
          n = n or 1
          if from then delta[from] = (delta[from] or 0) - n end
          delta[to] = (delta[to] or 0) + n
        end
        -- Records of older versions have fewer positions; a table with a hole would pack as a map.
        local function pad(t)
          for k = 1, Q - 1 do if t[k] == nil then t[k] = false end end
          if not t[A] then t[A] = 0 end
        end
        local function number(i, t)
          if not last then last = redis.call('LLEN', order) end
          last = last + 1
          pad(t)
          t[Q] = last
          numbered[#numbered + 1] = i
        end
        local function commit()
          for s, d in pairs(delta) do
            if d ~= 0 then redis.call('HINCRBY', counts, s, d) end
          end
          for j = 1, #numbered, 1000 do
            redis.call('RPUSH', order, unpack(numbered, j, math.min(j + 999, #numbered)))
          end
          if #numbered > 0 then redis.call('PUBLISH', base..':done', last) end
        end
        local function upgrade()
          if redis.call('HEXISTS', counts, 'counted') == 1 then return end
          if redis.call('EXISTS', base..':info') == 0 then return end
          local fields, done = {'counted', 1}, {}
          for _, state in ipairs(STATES) do
            local index = base..':state:'..state
            fields[#fields + 1] = state
            fields[#fields + 1] = redis.call('ZCARD', index)
            if terminal(state) then
              for _, i in ipairs(redis.call('ZRANGE', index, 0, -1)) do
                local t = load(i)
                if t then done[#done + 1] = {tonumber(t[C]) or 0, tonumber(i), i, t} end
              end
            end
          end
          table.sort(done, function(a, b)
            if a[1] ~= b[1] then return a[1] < b[1] end
            return a[2] < b[2]
          end)
          redis.call('DEL', order)
          local ids = {}
          for n, entry in ipairs(done) do
            local t = entry[4]
            pad(t)
            t[Q] = n
            redis.call('SET', tkey(entry[3]), cmsgpack.pack(t), 'KEEPTTL')
            ids[n] = entry[3]
          end
          for j = 1, #ids, 1000 do redis.call('RPUSH', order, unpack(ids, j, math.min(j + 999, #ids))) end
          redis.call('HSET', counts, unpack(fields))
          local ttl = redis.call('PTTL', base..':info')
          if ttl > 0 then
            redis.call('PEXPIRE', counts, ttl)
            if #ids > 0 then redis.call('PEXPIRE', order, ttl) end
          end
        end
        local function move(i, from, to)
          redis.call('ZREM', base..':state:'..from, i)
          redis.call('ZADD', base..':state:'..to, i, i)
          tally(from, to)
        end
        -- Every transition out of processing clears what only a running attempt has (TaskRules).
        local function unhold(t, state)
          t[S] = state
          t[O] = false
          t[L] = false
          t[CT] = false
        end
        local function afterFailure(i, t, msg, retryable, at)
          redis.call('ZREM', base..':leases', i)
          t[E] = msg
          if retryable and t[R] < t[M] then
            unhold(t, 'pending')
            t[R] = t[R] + 1
            save(i, t)
            move(i, 'processing', 'pending')
            return 'pending'
          end
          unhold(t, 'failed')
          t[C] = at
          number(i, t)
          save(i, t)
          move(i, 'processing', 'failed')
          return 'failed'
        end
        local function live(s) return s == 'pending' or s == 'processing' end
        local function held(t, owner, attempt)
          return t and t[S] == 'processing' and t[O] == owner and (t[A] or 0) == tonumber(attempt)
        end
        local function bulk(command, key, list)
          if #list > 0 then redis.call(command, key, unpack(list)) end
        end
        local function cancelOne(i, at)
          local t = load(i)
          if not t or not live(t[S]) then return nil end
          local s = t[S]
          unhold(t, 'cancelled')
          t[C] = at
          number(i, t)
          save(i, t)
          redis.call('ZREM', base..':leases', i)
          move(i, s, 'cancelled')
          return s
        end

        """

    /// ARGV: field/value pairs of the session hash. Returns 1 if created, 0 if it existed.
    static let createSession = RedisScript(name: "state.createSession", source: prelude + """
        if redis.call('EXISTS', base..':info') == 1 then return 0 end
        redis.call('HSET', base..':info', unpack(ARGV))
        redis.call('HSET', counts, 'counted', 1)
        return 1
        """)

    /// ARGV: key, count, "sent|state|version|created|updated". Returns {1, stored} when the session has a
    /// submission with this key (nothing reserved), {0, stored} when it reserved the indices and stored
    /// the submission as "first|count|sent|state|version|created|updated", {-1} for an unknown session,
    /// {-2} for a cancelled one.
    static let beginSubmission = RedisScript(name: "state.beginSubmission", source: prelude + """
        local subs = base..':subs'
        local existing = redis.call('HGET', subs, ARGV[1])
        if existing then return {1, existing} end
        local info = base..':info'
        local c = redis.call('HGET', info, 'cancelled')
        if not c then return {-1} end
        if c == '1' then return {-2} end
        -- A session kept for its retention period takes tasks again: its keys no longer expire.
        if redis.call('TTL', info) >= 0 then
          redis.call('PERSIST', info)
          redis.call('PERSIST', base..':leases')
          redis.call('PERSIST', subs)
          redis.call('PERSIST', counts)
          redis.call('PERSIST', order)
          for _, state in ipairs(STATES) do
            redis.call('PERSIST', base..':state:'..state)
          end
        end
        local count = tonumber(ARGV[2])
        local last = redis.call('HINCRBY', info, 'count', count)
        local stored = (last - count)..'|'..ARGV[2]..'|'..ARGV[3]
        redis.call('HSET', subs, ARGV[1], stored)
        return {0, stored}
        """)

    /// ARGV: key, expected version, "first|count|sent|state|version|created|updated". Replaces the
    /// submission if its stored version (the fifth field) is the expected one. Returns 1 if it did.
    static let updateSubmission = RedisScript(name: "state.updateSubmission", source: prelude + """
        local subs = base..':subs'
        local stored = redis.call('HGET', subs, ARGV[1])
        if not stored then return 0 end
        local fields = {}
        for field in string.gmatch(stored, '[^|]+') do fields[#fields + 1] = field end
        if fields[5] ~= ARGV[2] then return 0 end
        redis.call('HSET', subs, ARGV[1], ARGV[3])
        return 1
        """)

    /// Whether a session is complete: every reserved index has a terminal task. Returns 1 when it is
    /// and its keys do not expire yet, else 0.
    static let complete = RedisScript(name: "state.complete", source: prelude + """
        local info = base..':info'
        if redis.call('TTL', info) ~= -1 then return 0 end
        local count = tonumber(redis.call('HGET', info, 'count') or '0')
        local terminal = 0
        for _, state in ipairs({'finished', 'failed', 'cancelled'}) do
          terminal = terminal + redis.call('ZCARD', base..':state:'..state)
        end
        if terminal >= count then return 1 end
        return 0
        """)

    /// ARGV: seconds, state, first rank, count. Sets the expiry of up to `count` task records of one
    /// terminal state, by rank. Returns how many it set.
    static let expireTasks = RedisScript(name: "state.expireTasks", source: prelude + """
        local first = tonumber(ARGV[3])
        local ids = redis.call('ZRANGE', base..':state:'..ARGV[2], first, first + tonumber(ARGV[4]) - 1)
        for _, i in ipairs(ids) do redis.call('EXPIRE', tkey(i), ARGV[1]) end
        return #ids
        """)

    /// ARGV: seconds. Sets the expiry of the session's info and index keys if it is still complete
    /// (no submission came in meanwhile). Returns 1 if it did.
    static let expireSession = RedisScript(name: "state.expireSession", source: prelude + """
        local info = base..':info'
        local count = tonumber(redis.call('HGET', info, 'count') or '0')
        local terminal = 0
        for _, state in ipairs({'finished', 'failed', 'cancelled'}) do
          terminal = terminal + redis.call('ZCARD', base..':state:'..state)
        end
        if terminal < count then return 0 end
        redis.call('EXPIRE', info, ARGV[1])
        redis.call('EXPIRE', base..':leases', ARGV[1])
        redis.call('EXPIRE', base..':subs', ARGV[1])
        redis.call('EXPIRE', counts, ARGV[1])
        redis.call('EXPIRE', order, ARGV[1])
        for _, state in ipairs(STATES) do
          redis.call('EXPIRE', base..':state:'..state, ARGV[1])
        end
        return 1
        """)

    /// ARGV: groups (index, state, lease score or "", packed record). Existing tasks are left alone
    /// (`SET NX`); only the tasks created are counted, and those created terminal (an interrupted
    /// submission's tasks, failed or cancelled by the reaper) are numbered.
    static let createTasks = RedisScript(name: "state.createTasks", source: prelude + """
        upgrade()
        local n = 1
        local created = 0
        local byState = {}
        while n <= #ARGV do
          local i, s, lease = ARGV[n], ARGV[n + 1], ARGV[n + 2]
          if redis.call('SET', tkey(i), ARGV[n + 3], 'NX') then
            tally(nil, s)
            if terminal(s) then
              local t = cmsgpack.unpack(ARGV[n + 3])
              number(i, t)
              save(i, t)
            end
            local list = byState[s]
            if not list then list = {}; byState[s] = list end
            list[#list + 1] = i
            list[#list + 1] = i
            if lease ~= '' then redis.call('ZADD', base..':leases', lease, i) end
            created = created + 1
          end
          n = n + 4
        end
        for s, list in pairs(byState) do bulk('ZADD', base..':state:'..s, list) end
        commit()
        return created
        """)

    /// ARGV: owner, lease expiry, now, claim token, indices…. Returns pairs (index, packed record of
    /// the claimed task, as it is after the claim).
    ///
    /// A pending, unowned task starts a new attempt. Idempotent: a task keeps the token of the call that
    /// claimed it (position CT), so the same call sent again after a broken connection wins the tasks it
    /// had won, unchanged; any other call does not.
    static let claim = RedisScript(name: "state.claim", source: prelude + """
        upgrade()
        local owner, lease, now, call = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
        local out, won, processing, leases = {}, {}, {}, {}
        for n = 5, #ARGV do
          local i = ARGV[n]
          local v = redis.call('GET', tkey(i))
          if v then
            local t = cmsgpack.unpack(v)
            if t[S] == 'processing' and t[O] == owner and t[CT] == call then
              out[#out + 1] = i
              out[#out + 1] = v
            elseif t[S] == 'pending' and not t[O] then
              t[S] = 'processing'
              t[O] = owner
              t[L] = lease
              t[ST] = now
              t[CT] = call
              t[A] = (t[A] or 0) + 1
              won[#won + 1] = i
              processing[#processing + 1] = i
              processing[#processing + 1] = i
              leases[#leases + 1] = lease
              leases[#leases + 1] = i
              out[#out + 1] = i
              out[#out + 1] = save(i, t)
            end
          end
        end
        bulk('ZREM', base..':state:pending', won)
        bulk('ZADD', base..':state:processing', processing)
        bulk('ZADD', base..':leases', leases)
        tally('pending', 'processing', #won)
        commit()
        return out
        """)

    /// ARGV: owner, lease expiry, pairs (index, attempt). Returns the indices still held.
    static let heartbeat = RedisScript(name: "state.heartbeat", source: prelude + """
        local owner, lease = ARGV[1], ARGV[2]
        local out, leases = {}, {}
        for n = 3, #ARGV, 2 do
          local i = ARGV[n]
          local t = load(i)
          if held(t, owner, ARGV[n + 1]) then
            t[L] = lease
            save(i, t)
            leases[#leases + 1] = lease
            leases[#leases + 1] = i
            out[#out + 1] = i
          end
        end
        bulk('ZADD', base..':leases', leases)
        return out
        """)

    /// ARGV: owner, pairs (index, attempt). Puts the held attempts back to pending (no retry charged).
    /// Returns the indices released.
    static let releaseTasks = RedisScript(name: "state.release", source: prelude + """
        upgrade()
        local owner = ARGV[1]
        local out, pending = {}, {}
        for n = 2, #ARGV, 2 do
          local i = ARGV[n]
          local t = load(i)
          if held(t, owner, ARGV[n + 1]) then
            unhold(t, 'pending')
            save(i, t)
            pending[#pending + 1] = i
            pending[#pending + 1] = i
            out[#out + 1] = i
          end
        end
        bulk('ZREM', base..':leases', out)
        bulk('ZREM', base..':state:processing', out)
        bulk('ZADD', base..':state:pending', pending)
        tally('processing', 'pending', #out)
        commit()
        return out
        """)

    /// ARGV: owner, at, quadruples (index, attempt, has output "1"/"0", output). Returns the indices finished.
    static let finish = RedisScript(name: "state.finish", source: prelude + """
        upgrade()
        local owner, at = ARGV[1], ARGV[2]
        local out, finished = {}, {}
        for n = 3, #ARGV, 4 do
          local i = ARGV[n]
          local t = load(i)
          if held(t, owner, ARGV[n + 1]) then
            unhold(t, 'finished')
            t[C] = at
            t[E] = false
            if ARGV[n + 2] == '1' then t[OUT] = ARGV[n + 3] else t[OUT] = false end
            number(i, t)
            save(i, t)
            finished[#finished + 1] = i
            finished[#finished + 1] = i
            out[#out + 1] = i
          end
        end
        bulk('ZREM', base..':leases', out)
        bulk('ZREM', base..':state:processing', out)
        bulk('ZADD', base..':state:finished', finished)
        tally('processing', 'finished', #out)
        commit()
        return out
        """)

    /// ARGV: owner, at, quadruples (index, attempt, message, retryable "1"/"0"). Returns pairs (index,
    /// new state).
    static let fail = RedisScript(name: "state.fail", source: prelude + """
        upgrade()
        local owner, at = ARGV[1], ARGV[2]
        local out = {}
        for n = 3, #ARGV, 4 do
          local i = ARGV[n]
          local t = load(i)
          if held(t, owner, ARGV[n + 1]) then
            out[#out + 1] = i
            out[#out + 1] = afterFailure(i, t, ARGV[n + 2], ARGV[n + 3] == '1', at)
          end
        end
        commit()
        return out
        """)

    /// ARGV: now, indices…. Returns pairs (index, new state) of the tasks reaped.
    static let expire = RedisScript(name: "state.expire", source: prelude + """
        upgrade()
        local now = ARGV[1]
        local out = {}
        for n = 2, #ARGV do
          local i = ARGV[n]
          local t = load(i)
          if t and t[S] == 'processing' and t[L] and tonumber(t[L]) < tonumber(now) then
            out[#out + 1] = i
            out[#out + 1] = afterFailure(i, t, 'lease expired', true, now)
          end
        end
        commit()
        return out
        """)

    /// ARGV: at, pairs (index, message). Returns the indices failed.
    static let forceFail = RedisScript(name: "state.forceFail", source: prelude + """
        upgrade()
        local at = ARGV[1]
        local out = {}
        for n = 2, #ARGV, 2 do
          local i = ARGV[n]
          local t = load(i)
          if t and live(t[S]) then
            local s = t[S]
            unhold(t, 'failed')
            t[C] = at
            t[E] = ARGV[n + 1]
            number(i, t)
            save(i, t)
            redis.call('ZREM', base..':leases', i)
            move(i, s, 'failed')
            out[#out + 1] = i
          end
        end
        commit()
        return out
        """)

    /// ARGV: at, indices…. Returns {pending, processing} counts of the tasks cancelled.
    static let cancel = RedisScript(name: "state.cancel", source: prelude + """
        upgrade()
        local p, r = 0, 0
        for n = 2, #ARGV do
          local s = cancelOne(ARGV[n], ARGV[1])
          if s == 'pending' then p = p + 1 elseif s == 'processing' then r = r + 1 end
        end
        commit()
        return {p, r}
        """)

    /// ARGV: at. Marks the session cancelled and cancels its live tasks. Returns {pending, processing},
    /// or {-1} for an unknown session.
    static let cancelSession = RedisScript(name: "state.cancelSession", source: prelude + """
        local info = base..':info'
        if redis.call('EXISTS', info) == 0 then return {-1} end
        upgrade()
        redis.call('HSET', info, 'cancelled', '1')
        local p, r = 0, 0
        for _, state in ipairs({'pending', 'processing'}) do
          for _, i in ipairs(redis.call('ZRANGE', base..':state:'..state, 0, -1)) do
            local s = cancelOne(i, ARGV[1])
            if s == 'pending' then p = p + 1 elseif s == 'processing' then r = r + 1 end
          end
        end
        commit()
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
        for _, state in ipairs(STATES) do
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
          redis.call('DEL', info, base..':leases', base..':subs', counts, order)
          return {removed, 1}
        end
        return {removed, 0}
        """)

    /// ARGV: state, lower bound (exclusive "(n" or "-inf"), count. Returns pairs (index, packed record).
    static let page = RedisScript(name: "state.page", source: prelude + """
        local out = {}
        for _, i in ipairs(redis.call('ZRANGEBYSCORE', base..':state:'..ARGV[1], ARGV[2], '+inf', 'LIMIT', 0, ARGV[3])) do
          out[#out + 1] = i
          out[#out + 1] = redis.call('GET', tkey(i))
        end
        return out
        """)

    /// Upgrades a session the previous version wrote (see `upgrade`), then returns its counts hash
    /// (`HGETALL`); empty for an unknown session.
    static let counts = RedisScript(name: "state.counts", source: prelude + """
        upgrade()
        return redis.call('HGETALL', counts)
        """)

    /// ARGV: after, limit. Returns pairs (index, packed record) of the tasks numbered after+1 … after+limit
    /// (one `LRANGE` of the completion order, one `GET` per task); records gone with their retention
    /// period are left out.
    static let completions = RedisScript(name: "state.completions", source: prelude + """
        upgrade()
        local first = tonumber(ARGV[1])
        local out = {}
        for _, i in ipairs(redis.call('LRANGE', order, first, first + tonumber(ARGV[2]) - 1)) do
          local v = redis.call('GET', tkey(i))
          if v then
            out[#out + 1] = i
            out[#out + 1] = v
          end
        end
        return out
        """)

    /// ARGV: now, limit. Returns pairs (index, packed record) of processing tasks whose lease is before now.
    static let expired = RedisScript(name: "state.expired", source: prelude + """
        local out = {}
        for _, i in ipairs(redis.call('ZRANGEBYSCORE', base..':leases', '-inf', '('..ARGV[1], 'LIMIT', 0, ARGV[2])) do
          out[#out + 1] = i
          out[#out + 1] = redis.call('GET', tkey(i))
        end
        return out
        """)
}
