import GRDB

// The schema of an HTC Grid SQLite file
// =====================================
//
// One file holds the queue, the state and (optionally) the payloads. Dates are REAL seconds since
// 1970 (`Date.timeIntervalSince1970`); durations are REAL seconds.
//
// session — one row per session (StateStore).
//     id TEXT primary key (WITHOUT ROWID), priority, max_retries, task_timeout (NULL = none),
//     labels (a JSON object), created_at, task_count (the next task index to reserve; bumped by
//     `UPDATE … RETURNING` so reservations are atomic), cancelled (0/1).
//
// task — one row per task (StateStore), clustered by its id.
//     PRIMARY KEY (session, idx), WITHOUT ROWID: a task id `<session>_<idx>` finds its row in one
//     B-tree search, and the tasks of a session are stored together in index order.
//     state is the TaskState raw value ('pending', 'processing', 'finished', 'failed', 'cancelled');
//     owner and lease_expiry are set only while 'processing'; output holds an inline output of a
//     finished task; attempt counts the claims and claim_token is the token of the claim call that
//     started the current one, while the task is processing (v2; declared without a type, so a token
//     in base 36, as agents draw them, is kept as an 8-byte INTEGER, any other as TEXT). Every transition is one `UPDATE … WHERE <expected state, owner
//     and attempt>`, translating the rules of GridKernel's TaskRules.swift.
//   task_by_state (session, state, idx): counts per state and paging through one state in index
//     order are range scans of this index (the primary key columns come with it, so it covers counts).
//   task_lease (lease_expiry) WHERE state = 'processing': a partial index holding only running
//     tasks, so the reaper finds expired leases with a range scan instead of reading every task.
//   completion_seq (v3): the task's place in its session's completion order (1, 2, 3, … with no gap),
//     set in the write transaction that makes the task terminal; NULL while it is live.
//   task_completion (session, completion_seq) WHERE completion_seq IS NOT NULL: reading a session's
//     completions after number n is a range scan of this index.
//
// session_counts (v3) — one row per session that has tasks, kept by every transition in its write
//     transaction: session TEXT primary key (WITHOUT ROWID; no foreign key: tasks may be created
//     before or without their session row), pending, processing, finished, failed, cancelled.
//     counts() reads this row; finished + failed + cancelled is also the session's last completion
//     number, from which the next terminal tasks are numbered. deleteSession removes the row.
//
// queue — one row per message (TaskQueue). A task enqueued twice is two messages (at-least-once).
//     id INTEGER PRIMARY KEY (the rowid: enqueue order, which is FIFO within a priority),
//     session/idx (the task), priority, payload (inline input or NULL),
//     status: 0 ready, 1 leased, 2 delayed (released with a delay);
//     visible_at: for leased and delayed messages, when they become ready again (the lease expiry
//     or the end of the delay); left as it was once ready;
//     lease_token: a random 64-bit value drawn for each delivery; a lease handle is `<id>:<token>`,
//     so a handle from an earlier delivery never matches again;
//     delivery_count.
//   queue_ready (priority) WHERE status = 0: the ready messages by (priority, rowid). A lease serves
//     one priority band at a time and takes the first N entries of the band: it never reads leased
//     or delayed messages. Finding the next band is one seek in the same index, for either
//     PriorityOrder.
//   queue_timer (visible_at) WHERE status <> 0: leased and delayed messages by the time they come
//     due. Each lease first turns the due ones ready again (a range scan that is empty most of the
//     time); they keep their rowid and so their place in line.
//
// dead_letter — messages given up on after `maxDeliveries` deliveries, drained by the reaper:
//     id INTEGER PRIMARY KEY (order of arrival), session, idx, reason.
//
// submission — one row per submission (v2): PRIMARY KEY (session, key) (the idempotency key), the
//     reserved range (first, count), sent (tasks written with their messages), state ('open',
//     'repairing', 'complete', 'repaired'), version (updates are conditional on it), created_at,
//     updated_at.
//   submission_active (updated_at) WHERE state IN ('open', 'repairing'): the reaper finds stalled
//     submissions without reading complete ones.
//
// payload — key TEXT PRIMARY KEY, value BLOB (SQLitePayloadStore).
//
// grdb_migrations — the migrations applied (GRDB's DatabaseMigrator).
//
// All DDL is `IF NOT EXISTS`: GRDB's migrator reads the applied migrations outside of the migration's
// transaction, so two processes creating the same new file may both run "v1"; the loser's bookkeeping
// insert then fails and ``SQLiteSchema/migrate(_:)`` runs the migrator again, which finds "v1" applied.

/// Creates and upgrades the schema described above.
enum SQLiteSchema {
    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS session (
                    id           TEXT NOT NULL PRIMARY KEY,
                    priority     INTEGER NOT NULL,
                    max_retries  INTEGER NOT NULL,
                    task_timeout REAL,
                    labels       TEXT NOT NULL,
                    created_at   REAL NOT NULL,
                    task_count   INTEGER NOT NULL DEFAULT 0,
                    cancelled    INTEGER NOT NULL DEFAULT 0
                ) WITHOUT ROWID;

                CREATE TABLE IF NOT EXISTS task (
                    session      TEXT NOT NULL,
                    idx          INTEGER NOT NULL,
                    state        TEXT NOT NULL,
                    owner        TEXT,
                    lease_expiry REAL,
                    retries      INTEGER NOT NULL,
                    max_retries  INTEGER NOT NULL,
                    priority     INTEGER NOT NULL,
                    timeout      REAL,
                    submitted_at REAL NOT NULL,
                    started_at   REAL,
                    completed_at REAL,
                    last_error   TEXT,
                    output       BLOB,
                    PRIMARY KEY (session, idx)
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS task_by_state ON task (session, state, idx);
                CREATE INDEX IF NOT EXISTS task_lease ON task (lease_expiry) WHERE state = 'processing';

                CREATE TABLE IF NOT EXISTS queue (
                    id             INTEGER PRIMARY KEY,
                    session        TEXT NOT NULL,
                    idx            INTEGER NOT NULL,
                    priority       INTEGER NOT NULL,
                    payload        BLOB,
                    status         INTEGER NOT NULL DEFAULT 0,
                    visible_at     REAL,
                    lease_token    INTEGER,
                    delivery_count INTEGER NOT NULL DEFAULT 0
                );
                CREATE INDEX IF NOT EXISTS queue_ready ON queue (priority) WHERE status = 0;
                CREATE INDEX IF NOT EXISTS queue_timer ON queue (visible_at) WHERE status <> 0;

                CREATE TABLE IF NOT EXISTS dead_letter (
                    id      INTEGER PRIMARY KEY,
                    session TEXT NOT NULL,
                    idx     INTEGER NOT NULL,
                    reason  TEXT NOT NULL
                );

                CREATE TABLE IF NOT EXISTS payload (
                    key   TEXT NOT NULL PRIMARY KEY,
                    value BLOB NOT NULL
                );
                """)
        }
        // Attempt fencing and submission journals: every claim numbers an attempt (and keeps the
        // claim call's token), and every submission keeps its reserved indices and progress.
        migrator.registerMigration("v2") { db in
            let columns = try db.columns(in: "task").map(\.name)
            if !columns.contains("attempt") {
                try db.execute(sql: "ALTER TABLE task ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0")
            }
            if !columns.contains("claim_token") {
                // No declared type, so no affinity: tokens drawn by agents stay 8-byte integers.
                try db.execute(sql: "ALTER TABLE task ADD COLUMN claim_token")
            }
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS submission (
                    session    TEXT NOT NULL,
                    key        TEXT NOT NULL,
                    first      INTEGER NOT NULL,
                    count      INTEGER NOT NULL,
                    sent       INTEGER NOT NULL,
                    state      TEXT NOT NULL,
                    version    INTEGER NOT NULL,
                    created_at REAL NOT NULL,
                    updated_at REAL NOT NULL,
                    PRIMARY KEY (session, key)
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS submission_active ON submission (updated_at) WHERE state IN ('open', 'repairing');
                """)
        }
        // Counts kept with the transitions and the completion order: a file made by an earlier version
        // gets its counters from its tasks and its terminal tasks numbered by completion date, then index.
        migrator.registerMigration("v3") { db in
            if try !db.columns(in: "task").map(\.name).contains("completion_seq") {
                try db.execute(sql: "ALTER TABLE task ADD COLUMN completion_seq INTEGER")
            }
            try db.execute(sql: """
                CREATE TABLE IF NOT EXISTS session_counts (
                    session    TEXT NOT NULL PRIMARY KEY,
                    pending    INTEGER NOT NULL DEFAULT 0,
                    processing INTEGER NOT NULL DEFAULT 0,
                    finished   INTEGER NOT NULL DEFAULT 0,
                    failed     INTEGER NOT NULL DEFAULT 0,
                    cancelled  INTEGER NOT NULL DEFAULT 0
                ) WITHOUT ROWID;
                CREATE INDEX IF NOT EXISTS task_completion ON task (session, completion_seq) WHERE completion_seq IS NOT NULL;

                INSERT OR REPLACE INTO session_counts (session, pending, processing, finished, failed, cancelled)
                SELECT session, sum(state = 'pending'), sum(state = 'processing'), sum(state = 'finished'),
                    sum(state = 'failed'), sum(state = 'cancelled')
                FROM task GROUP BY session;

                UPDATE task SET completion_seq = numbered.seq
                FROM (
                    SELECT session, idx, row_number() OVER (PARTITION BY session ORDER BY completed_at, idx) AS seq
                    FROM task WHERE state IN ('finished', 'failed', 'cancelled')
                ) AS numbered
                WHERE task.session = numbered.session AND task.idx = numbered.idx;
                """)
        }
        return migrator
    }()

    /// Applies the migrations the file lacks; safe to race with another process doing the same.
    static func migrate(_ pool: DatabasePool) throws {
        do {
            try migrator.migrate(pool)
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            // Another process applied the same migration between our check and our insert.
            try migrator.migrate(pool)
        }
    }
}
