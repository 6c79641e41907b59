// The schema of an HTC Grid in PostgreSQL
// =======================================
//
// All tables live in one schema (`?schema=`, default `htc`), created on first use. Dates are float8
// seconds since 1970 from the grid's injected clock (never the server's `now()`), durations float8
// seconds. Ids are `text COLLATE "C"`: sessions are listed in byte order whatever the database's
// collation.
//
// session — one row per session (StateStore). task_count is the next index to reserve, bumped by
//     the statement that begins a submission, under the session row's lock, so reservations are
//     atomic and consecutive.
//
// task — one row per task (StateStore), PRIMARY KEY (session, idx). state is the TaskState raw
//     value; owner and lease_expiry are set only while 'processing'. attempt counts the claims (0
//     before the first) and claim_token names the claim call that started the current attempt.
//     Every transition is one `UPDATE … FROM unnest(…) WHERE <expected state, owner and attempt>
//     RETURNING …` for the whole batch.
//     completion_seq is the task's number in its session's completion order (NULL while it is not
//     terminal), given by the statement that makes it terminal (see session_completed).
//   task_by_state (session, state, idx): paging through one state.
//   task_lease (lease_expiry) WHERE state = 'processing': a partial index of running tasks only, so
//     the reaper finds expired leases with a range scan instead of reading every task.
//   task_completion (session, completion_seq) WHERE completion_seq IS NOT NULL: completions() is a
//     range scan of it.
//
// task_counts — a session's tasks per state, kept by every statement that creates, moves or deletes
//     tasks, in the same statement: PRIMARY KEY (session, state, shard), n is a delta sum that may be
//     negative in one shard. A statement adds its deltas to the shard `pg_backend_pid() % 16`, so
//     writers on different connections rarely update the same row; counts() sums at most 16 × 5 rows.
//
// session_completed — the last completion number of each session: (session PRIMARY KEY, last). A
//     statement making tasks terminal adds their number to `last` (an upsert that locks the row) and
//     numbers them `last - n + 1 … last`; the row lock, held until commit, makes the numbering of a
//     session one writer at a time and its commits come in number order, so readers always see a
//     prefix of the order (a SEQUENCE hands out numbers without ordering the commits).
//
// submission — one row per submission (StateStore), PRIMARY KEY (session, key): the indices it
//     reserved (first, count), how many of them were sent, its state (SubmissionState raw value) and
//     the version its updates are conditional on.
//   submission_stalled (updated_at, session, key) WHERE state IN ('open', 'repairing'): a partial
//     index of active submissions only, so the reaper finds stalled ones with a range scan however
//     many complete submissions the table keeps.
//
// queue — one row per message (TaskQueue): id (identity: enqueue order, FIFO within a priority),
//     session/idx, priority, payload (inline input or NULL), status (0 ready, 1 leased, 2 released
//     with a delay), visible_at (when a leased or delayed message comes due), delivery_count. A lease
//     handle is `<id>:<delivery_count>`: a later delivery bumps the count, so an old handle never
//     acts on it.
//   queue_ready (priority, id) WHERE status = 0: a lease finds the first priority band with one
//     seek and takes the band's first N ids, `FOR UPDATE SKIP LOCKED`, so concurrent agents never
//     wait for each other nor take the same message.
//   queue_timer (visible_at) WHERE status <> 0: leased and delayed messages by the time they come due.
//
// payload — key text PRIMARY KEY, value bytea (PostgresPayloadStore).
//
// The DDL is one `DO` block under a transaction-scoped advisory lock, so processes starting at the
// same moment create the schema once (`CREATE … IF NOT EXISTS` alone races on the catalogue).
//
// Upgrades: every statement of the block is idempotent (or guarded by a test of the catalogue), and a later change of the schema is a
// statement appended to it (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`, `CREATE … IF NOT EXISTS`), so
// a grid created by an older version upgrades itself the first time a newer process opens it.
// Columns added later come with a default that describes the rows written before them (attempt 0:
// never claimed under attempt numbering; no claim token). PostgreSQL 11 and later add a column with
// a constant default without rewriting the table. The counters and the completion order came later
// still: the block that creates task_counts also fills it from the task table, and numbers the
// terminal tasks already there by completed_at, then idx (a few passes over the task table, once). The
// processes of an older version do not keep the counters: stop them before a newer one opens the grid.

import GridKernel

/// Creates the schema described above.
enum PostgresSchema {
    /// The advisory lock key taken while creating a schema ("htc-grid" in ASCII, truncated to 63 bits).
    static let lockKey: Int64 = 0x6874_632d_6772_6964 & Int64.max

    /// The terminal states as an SQL list: `('finished', 'failed', 'cancelled')`.
    static let terminal = "(" + TaskState.terminal.map { "'\($0.rawValue)'" }.joined(separator: ", ") + ")"

    /// The `DO` block creating `schema` and its tables; `schema` must be a checked identifier.
    static func ddl(schema: String) -> String {
        let s = "\"\(schema)\""
        return """
            DO $htc$
            BEGIN
                PERFORM pg_advisory_xact_lock(\(lockKey));
                CREATE SCHEMA IF NOT EXISTS \(s);
                CREATE TABLE IF NOT EXISTS \(s).session (
                    id           text COLLATE "C" PRIMARY KEY,
                    priority     bigint NOT NULL,
                    max_retries  bigint NOT NULL,
                    task_timeout float8,
                    labels       text NOT NULL,
                    created_at   float8 NOT NULL,
                    task_count   bigint NOT NULL DEFAULT 0,
                    cancelled    boolean NOT NULL DEFAULT false
                );
                CREATE TABLE IF NOT EXISTS \(s).task (
                    session      text COLLATE "C" NOT NULL,
                    idx          bigint NOT NULL,
                    state        text NOT NULL,
                    owner        text,
                    lease_expiry float8,
                    retries      bigint NOT NULL,
                    max_retries  bigint NOT NULL,
                    priority     bigint NOT NULL,
                    timeout      float8,
                    submitted_at float8 NOT NULL,
                    started_at   float8,
                    completed_at float8,
                    last_error   text,
                    output       bytea,
                    PRIMARY KEY (session, idx)
                );
                CREATE INDEX IF NOT EXISTS task_by_state ON \(s).task (session, state, idx);
                CREATE INDEX IF NOT EXISTS task_lease ON \(s).task (lease_expiry) WHERE state = 'processing';
                -- Attempt fencing and repeatable claims (added after the first release).
                ALTER TABLE \(s).task ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 0;
                ALTER TABLE \(s).task ADD COLUMN IF NOT EXISTS claim_token text;
                -- Submissions (added after the first release; they replace bare index reservations).
                CREATE TABLE IF NOT EXISTS \(s).submission (
                    session    text COLLATE "C" NOT NULL,
                    key        text COLLATE "C" NOT NULL,
                    first      bigint NOT NULL,
                    count      bigint NOT NULL,
                    sent       bigint NOT NULL,
                    state      text NOT NULL,
                    version    bigint NOT NULL,
                    created_at float8 NOT NULL,
                    updated_at float8 NOT NULL,
                    PRIMARY KEY (session, key)
                );
                CREATE INDEX IF NOT EXISTS submission_stalled ON \(s).submission (updated_at, session, key)
                    WHERE state IN ('open', 'repairing');
                -- Counters and completion order (added after submissions), filled from the tasks present.
                IF to_regclass('\(s).task_counts') IS NULL THEN
                    ALTER TABLE \(s).task ADD COLUMN IF NOT EXISTS completion_seq bigint;
                    CREATE TABLE \(s).task_counts (
                        session text COLLATE "C" NOT NULL,
                        state   text NOT NULL,
                        shard   smallint NOT NULL,
                        n       bigint NOT NULL,
                        PRIMARY KEY (session, state, shard)
                    );
                    CREATE TABLE \(s).session_completed (
                        session text COLLATE "C" PRIMARY KEY,
                        last    bigint NOT NULL
                    );
                    INSERT INTO \(s).task_counts (session, state, shard, n)
                        SELECT session, state, 0, count(*) FROM \(s).task GROUP BY session, state;
                    UPDATE \(s).task AS t SET completion_seq = o.seq
                    FROM (SELECT session, idx, row_number() OVER (PARTITION BY session ORDER BY completed_at, idx) AS seq
                          FROM \(s).task WHERE state IN \(terminal)) AS o
                    WHERE t.session = o.session AND t.idx = o.idx;
                    INSERT INTO \(s).session_completed (session, last)
                        SELECT session, count(*) FROM \(s).task WHERE state IN \(terminal) GROUP BY session;
                END IF;
                CREATE INDEX IF NOT EXISTS task_completion ON \(s).task (session, completion_seq)
                    WHERE completion_seq IS NOT NULL;
                CREATE TABLE IF NOT EXISTS \(s).queue (
                    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    session        text COLLATE "C" NOT NULL,
                    idx            bigint NOT NULL,
                    priority       bigint NOT NULL,
                    payload        bytea,
                    status         smallint NOT NULL DEFAULT 0,
                    visible_at     float8,
                    delivery_count bigint NOT NULL DEFAULT 0
                );
                CREATE INDEX IF NOT EXISTS queue_ready ON \(s).queue (priority, id) WHERE status = 0;
                CREATE INDEX IF NOT EXISTS queue_timer ON \(s).queue (visible_at) WHERE status <> 0;
                CREATE TABLE IF NOT EXISTS \(s).payload (
                    key   text COLLATE "C" PRIMARY KEY,
                    value bytea NOT NULL
                );
            END
            $htc$
            """
    }
}
