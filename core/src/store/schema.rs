//! The SQLite schema and its migrations.
//!
//! A UTP store is recognised by its header's `application_id` (`UTPR`) and its
//! `meta` table, whose `schema_version` row says which migrations ran. Opening
//! applies the missing ones in one `BEGIN IMMEDIATE` transaction; a database from
//! a newer version, a foreign SQLite database and a file that is not SQLite at all
//! are refused before anything in them is changed.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::store_error;
use crate::error::{Error, Result};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 2;

/// `PRAGMA application_id` of a UTP store: "UTPR".
pub(crate) const APPLICATION_ID: i32 = 0x5554_5052;

/// Migration `n` takes the schema from version `n - 1` to `n`. Append only.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE executions (
    id          TEXT PRIMARY KEY,
    workflow    TEXT NOT NULL,
    definition  TEXT NOT NULL,
    status      TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    outputs     TEXT NOT NULL,
    error       TEXT NOT NULL,
    warnings    TEXT NOT NULL,
    tenant      TEXT,
    session     TEXT,
    user        TEXT,
    timeout_ms  INTEGER,
    created_at  TEXT NOT NULL,
    created_us  INTEGER NOT NULL,
    finished_at TEXT,
    finished_us INTEGER
);
CREATE INDEX executions_by_status  ON executions (status, created_us);
CREATE INDEX executions_by_session ON executions (session, created_us);
CREATE INDEX executions_by_created ON executions (created_us);

CREATE TABLE steps (
    execution_id TEXT NOT NULL,
    step_id      TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    status       TEXT NOT NULL,
    output       TEXT NOT NULL,
    error        TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    note         TEXT,
    approval_id  TEXT,
    PRIMARY KEY (execution_id, step_id)
) WITHOUT ROWID;

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance     INTEGER NOT NULL,
    event_id     INTEGER,
    type         TEXT NOT NULL,
    time_us      INTEGER NOT NULL,
    execution_id TEXT,
    body         TEXT NOT NULL
);
CREATE UNIQUE INDEX events_by_engine_id ON events (instance, event_id) WHERE event_id IS NOT NULL;
CREATE INDEX events_by_execution ON events (execution_id, seq);
CREATE INDEX events_by_type      ON events (type, seq);
CREATE INDEX events_by_time      ON events (time_us);

CREATE TABLE approvals (
    id      TEXT PRIMARY KEY,
    status  TEXT NOT NULL,
    created TEXT NOT NULL,
    body    TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX approvals_by_status ON approvals (status, created);

CREATE TABLE session_states (
    tenant  TEXT NOT NULL,
    session TEXT NOT NULL,
    state   TEXT NOT NULL,
    PRIMARY KEY (tenant, session)
) WITHOUT ROWID;
"#,
    ),
    // Every step commit inserted its events into as many places of this index as they
    // had types (step.started, tool.called, ... each in its own run of leaves): a third
    // of the pages a workflow wrote. Queries by type alone now scan in store order;
    // by execution and type they use events_by_execution.
    (2, "DROP INDEX events_by_type;"),
];

/// A rusqlite error as a STORE error about `path`.
pub(crate) fn sql_error(path: &Path, doing: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    let p = path.display();
    match e.sqlite_error_code() {
        Some(C::DiskFull) => store_error(format!(
            "store {p}: {doing}: the database or the disk is full (SQLITE_FULL); nothing of this write was committed, free space or run retention and retry"
        )),
        Some(C::NotADatabase) => store_error(format!(
            "store {p}: {doing}: the file is not a SQLite database (corrupt, or another kind of file)"
        )),
        Some(C::DatabaseCorrupt) => store_error(format!("store {p}: {doing}: the database is corrupt ({e})")),
        Some(C::ReadOnly) => store_error(format!("store {p}: {doing}: the database is read-only ({e})")),
        Some(C::CannotOpen) | Some(C::PermissionDenied) => {
            store_error(format!("store {p}: {doing}: cannot open the database file ({e})"))
        }
        Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => {
            store_error(format!("store {p}: {doing}: the database stayed locked past the busy timeout ({e})"))
        }
        _ => store_error(format!("store {p}: {doing}: {e}")),
    }
}

fn on<'a>(path: &'a Path, doing: &'a str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |e| sql_error(path, doing, e)
}

/// What the header and the schema say: the application id and the user tables.
struct Header {
    app_id: i32,
    tables: Vec<String>,
}

/// Read the header (random bytes fail here: it is the first access) and refuse
/// a database that is not ours, before anything in it is read further or changed.
fn recognise(conn: &Connection, path: &Path) -> Result<Header> {
    let p = path.display();
    let app_id: i32 =
        conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(on(path, "reading the header"))?;
    let tables: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .map_err(on(path, "reading the schema"))?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(on(path, "reading the schema"))?;
        rows.collect::<rusqlite::Result<_>>().map_err(on(path, "reading the schema"))?
    };
    if app_id != APPLICATION_ID && !(app_id == 0 && tables.is_empty()) {
        let shown: Vec<&str> = tables.iter().take(6).map(String::as_str).collect();
        let more = if tables.len() > shown.len() { ", ..." } else { "" };
        return Err(store_error(format!(
            "store {p}: not a UTP store database (application_id {app_id:#x}, tables: {}{more}); refusing to touch it, use another path",
            if shown.is_empty() { "none".to_string() } else { shown.join(", ") }
        )));
    }
    Ok(Header { app_id, tables })
}

/// The schema version recorded in `meta` (0 without a meta table); a version
/// newer than this build's is refused.
fn schema_version(conn: &Connection, path: &Path) -> Result<u32> {
    let p = path.display();
    let has_meta: bool = conn
        .query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'meta'", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(on(path, "reading the schema"))?
        > 0;
    let current: u32 = if has_meta {
        let text: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(on(path, "reading the schema version"))?;
        let text = text.ok_or_else(|| store_error(format!("store {p}: the meta table has no schema_version")))?;
        text.trim()
            .parse()
            .map_err(|_| store_error(format!("store {p}: schema_version is \"{text}\", expected a whole number")))?
    } else {
        0
    };
    if current > SCHEMA_VERSION {
        return Err(store_error(format!(
            "store {p}: the database has schema version {current}, newer than this runtime's {SCHEMA_VERSION}; open it with a newer UTP Runtime"
        )));
    }
    Ok(current)
}

/// For a read-only open: recognise the file and check, without changing
/// anything, that its schema is exactly this build's (a read-only open cannot
/// migrate). Reads in one snapshot.
pub(crate) fn check_schema_read_only(conn: &Connection, path: &Path) -> Result<()> {
    let p = path.display();
    let tx = conn.unchecked_transaction().map_err(on(path, "starting a read"))?;
    let header = recognise(&tx, path)?;
    if header.app_id == 0 && header.tables.is_empty() {
        return Err(store_error(format!(
            "store {p}: the database is empty (no UTP schema yet), there is nothing to read; a command that opens it for writing creates the schema"
        )));
    }
    let current = schema_version(&tx, path)?;
    if current < SCHEMA_VERSION {
        return Err(store_error(format!(
            "store {p}: the database has schema version {current}, older than this runtime's {SCHEMA_VERSION}, and a read-only open cannot migrate it; run a command that opens it for writing to migrate it (this needs the engine that holds it, if any, to be closed)"
        )));
    }
    Ok(())
}

/// Recognise the file, refuse what is not ours, apply the missing migrations and
/// start a new engine instance (returned: it scopes engine event ids).
pub(crate) fn open_schema(conn: &mut Connection, path: &Path) -> Result<(u32, i64)> {
    let p = path.display();
    recognise(conn, path)?;
    let mode: String =
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(on(path, "enabling WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(store_error(format!(
            "store {p}: the filesystem refused WAL mode (journal_mode is {mode}); put the database on a local disk"
        )));
    }

    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(on(path, "starting the migration transaction"))?;
    let current = schema_version(&tx, path)?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql).map_err(on(path, &format!("applying migration {version}")))?;
    }
    if current < SCHEMA_VERSION {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION.to_string()],
        )
        .map_err(on(path, "recording the schema version"))?;
        tx.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}"))
            .map_err(on(path, "writing the header"))?;
    }
    let instance: i64 = tx
        .query_row("SELECT value FROM meta WHERE key = 'instances'", [], |r| r.get::<_, String>(0))
        .optional()
        .map_err(on(path, "reading the instance counter"))?
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        .saturating_add(1);
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('instances', ?1)", [instance.to_string()])
        .map_err(on(path, "recording the instance"))?;
    tx.commit().map_err(on(path, "committing the migrations"))?;
    Ok((current, instance))
}
