//! The SQLite store: bundled SQLite in WAL mode.
//!
//! - One writer thread owns the only write connection. Writes are queued; the
//!   writer takes everything queued (up to [`MAX_BATCH`]) and applies it in ONE
//!   transaction (group commit), each write inside its own savepoint so that a bad
//!   write fails alone. If the transaction itself fails (disk full, I/O error) the
//!   writer retries each write of the batch in a transaction of its own, so every
//!   [`Commit`] gets its own true answer and nothing is silently lost.
//! - Checkpoints (copying committed pages from the WAL into the database file, two
//!   fsyncs each) are kept off the writer's path: its connection never checkpoints
//!   on commit; a checkpointer thread with its own connection runs PASSIVE
//!   checkpoints (which never block the writer) once enough of the WAL is not yet
//!   copied, or when the writer has been idle for a moment. Only when the WAL grows
//!   long under sustained writes does the writer catch up itself, so that SQLite
//!   can start the WAL over. A commit's durability does not depend on checkpoints.
//! - Readers use their own connections (a small pool); WAL lets them read while
//!   the writer commits. Every connection has a busy timeout.
//! - An exclusive `flock` on `<db>.lock` keeps a second engine (another process,
//!   or another store in this one) from opening the same database: it gets a clear
//!   STORE error until the first store is dropped. The lock file is left in place
//!   (removing it would race with the next opener). A lock found taken is tried
//!   again for up to [`LOCK_WAIT`]: a process forked by another thread of this one
//!   (a cli tool, any `Command`) holds a copy of the lock's file until it execs, so
//!   a store just dropped can look taken for that long.
//! - Dropping the store flushes every queued write, joins the writer, then releases the lock.
//! - [`SqliteStore::open_read_only`] opens for inspection only (`utp executions`,
//!   `utp show`, `utp events`) while another engine may hold the database: no lock,
//!   no writer, no migration; every write is refused.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde_json::Value;

use super::schema::{check_schema_read_only, open_schema, sql_error};
use super::{
    Commit, Durability, EventFilter, ExecutionFilter, ExecutionRow, PreparedApproval, PreparedEvent, PreparedExecution,
    Responder, StepRow, Store, UNFINISHED_STATUSES, event_range, execution_range, oneshot, parse_time,
    prepare_approval, prepare_events, prepare_execution, prepare_step, prepare_steps_of, store_error, with_seq,
};
use crate::error::{Error, Result};

/// The most writes one transaction takes from the queue.
const MAX_BATCH: usize = 1024;
/// Idle reader connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// WAL frames not yet copied into the database that wake the checkpointer
/// (SQLite's own autocheckpoint default).
const CHECKPOINT_FRAMES: i64 = 1000;
/// A WAL this long (frames, about 4 KiB each) is restarted by the writer itself:
/// SQLite starts a WAL over only when a write begins with all of it copied, which
/// background checkpoints alone never reach under sustained writes.
const RESTART_FRAMES: i64 = 8192;
/// The writer idle this long with WAL frames not copied wakes the checkpointer
/// (so at most 10 idle checkpoints a second, each two fsyncs off the writer's path).
const IDLE_CHECKPOINT: Duration = Duration::from_millis(100);
/// After a commit the writer polls the queue this long (yielding the CPU between
/// polls) before it parks: a caller that waited on its commit usually sends its
/// next write within it, which then costs no wake-up of the writer. Long enough for
/// a Python tool's step, which comes later than a Rust step's (docs/benchmarks.md).
const POLL_BEFORE_PARK: Duration = Duration::from_micros(80);
/// Events given to `defer_events` wait at most this long for a commit to ride in
/// before the writer commits them on their own (what a crash can lose of them).
const FLUSH_DELAY: Duration = Duration::from_millis(10);
/// `journal_size_limit`: the WAL file is cut back to this after a burst.
const WAL_SIZE_LIMIT: i64 = 64 << 20;
/// How long opening waits for a lock found taken before saying another engine holds it.
const LOCK_WAIT: Duration = Duration::from_millis(250);

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    path: PathBuf,
    durability: Durability,
    instance: i64,
    migrated_from: u32,
    /// Opened with [`SqliteStore::open_read_only`]: no writer, no lock, writes refused.
    read_only: bool,
    tx: Option<mpsc::Sender<Msg>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    /// Events from `defer_events`, in publish order, not yet sent to the writer: the
    /// next execution, step or events write takes them (under this lock, so that no
    /// later write overtakes them), or the writer commits them after FLUSH_DELAY.
    deferred: Arc<Mutex<Vec<PreparedEvent>>>,
    stats: Arc<Counters>,
    /// Held (flock) for the store's lifetime; dropped last. `None` when read-only.
    _lock: Option<File>,
}

/// What the writer did so far: `writes / transactions` is the group-commit factor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Writes committed (each `put_*` call that resolved Ok).
    pub writes: u64,
    /// Write transactions committed.
    pub transactions: u64,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    transactions: AtomicU64,
}

enum Op {
    Execution { execution: Box<PreparedExecution>, steps: Vec<StepRow>, events: Vec<PreparedEvent> },
    Step { step: Box<StepRow>, status: Option<String>, events: Vec<PreparedEvent> },
    Events(Vec<PreparedEvent>),
    Approval(PreparedApproval),
    Session { tenant: String, session: String, state: Value },
}

enum Msg {
    Write(Op, Responder<()>),
    /// Events were deferred: commit them within FLUSH_DELAY if no write takes them.
    FlushSoon,
    /// One retention batch in its own transaction → (rows deleted, whether the batch was full).
    Prune {
        executions: bool,
        cutoff_us: i64,
        batch: usize,
        reply: Responder<(usize, bool)>,
    },
    MaxPageCount(u64, Responder<u64>),
}

fn unfinished_sql() -> String {
    UNFINISHED_STATUSES.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`, apply migrations, start the writer.
    pub fn open(path: &Path, durability: Durability) -> Result<SqliteStore> {
        let p = path.display();
        if path.is_dir() {
            return Err(store_error(format!("store {p}: is a directory, expected a database file path")));
        }
        let lock = acquire_lock(path)?;
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_error(path, "opening", e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| sql_error(path, "setting the busy timeout", e))?;
        // Connection settings only (nothing is read or written yet): the migration
        // commit already honours the durability.
        let sync = synchronous(durability);
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 0;
             PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(|e| sql_error(path, "setting durability", e))?;
        conn.set_prepared_statement_cache_capacity(32);
        let (migrated_from, instance) = open_schema(&mut conn, path)?;
        let reader = open_reader(path)?;
        // Without its own connection there is no background checkpointing: the
        // writer then checkpoints as SQLite would on its own.
        let checkpointer = Checkpointer::start(path, durability);

        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Counters::default());
        let deferred = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer {
            conn,
            path: path.to_path_buf(),
            instance,
            stats: stats.clone(),
            checkpointer,
            restart_at: RESTART_FRAMES,
            uncopied: false,
            deferred: deferred.clone(),
            flush_due: None,
        };
        let handle = std::thread::Builder::new()
            .name("utp-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| store_error(format!("store {p}: cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            durability,
            instance,
            migrated_from,
            read_only: false,
            tx: Some(tx),
            writer: Some(handle),
            readers: Mutex::new(vec![reader]),
            deferred,
            stats,
            _lock: Some(lock),
        })
    }

    /// Open an existing database for reading only, for inspection while another
    /// engine (another process, or another store in this one) may hold it: takes
    /// no lock, starts no writer, applies no migration, changes nothing. Reads see
    /// what that engine has committed (WAL). Refused with a STORE error: a missing
    /// file, a file that is not a UTP store, and a schema version other than
    /// [`SCHEMA_VERSION`](super::SCHEMA_VERSION) (an older one must first be
    /// migrated by an open for writing). Every write (`put_*`, `prune`) resolves
    /// with a STORE error.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore> {
        let p = path.display();
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                return Err(store_error(format!("store {p}: is a directory, expected a database file path")));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(store_error(format!(
                    "store {p}: not found, there is no database at this path to read (check the path; a command that opens it for writing creates it)"
                )));
            }
            Err(e) => return Err(store_error(format!("store {p}: cannot read the database file: {e}"))),
        }
        let reader = open_reader(path)?;
        check_schema_read_only(&reader, path)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            durability: Durability::default(),
            instance: 0,
            migrated_from: super::SCHEMA_VERSION,
            read_only: true,
            tx: None,
            writer: None,
            readers: Mutex::new(vec![reader]),
            deferred: Arc::default(),
            stats: Arc::new(Counters::default()),
            _lock: None,
        })
    }

    /// Whether this store was opened with [`SqliteStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The error of every write on a read-only store.
    fn read_only_error(&self) -> Error {
        store_error(format!(
            "store {}: opened read-only (for inspection), writes are refused; open it for writing to change it",
            self.path.display()
        ))
    }

    /// `Some(refused commit)` when read-only.
    fn refuse_write(&self) -> Option<Commit> {
        self.read_only.then(|| Commit::ready(Err(self.read_only_error())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The durability of writes (the default for a read-only store, which writes nothing).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// This open's instance number (increases with every open of the file); engine
    /// event ids are unique per instance. 0 for a read-only open, which starts none.
    pub fn instance(&self) -> i64 {
        self.instance
    }

    /// The schema version found on open (0 for a new file; the current version when read-only).
    pub fn migrated_from(&self) -> u32 {
        self.migrated_from
    }

    /// Writes and transactions committed by this store's writer.
    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            transactions: self.stats.transactions.load(Ordering::Relaxed),
        }
    }

    /// Test hook: cap the database size (`PRAGMA max_page_count` on the writer's
    /// connection) to simulate a full disk. Returns the cap in force.
    #[doc(hidden)]
    pub fn set_max_page_count(&self, pages: u64) -> Result<u64> {
        let (reply, pending) = oneshot();
        self.send(Msg::MaxPageCount(pages, reply))?;
        pending.wait_blocking()
    }

    fn send(&self, msg: Msg) -> Result<()> {
        if self.read_only {
            return Err(self.read_only_error());
        }
        let closed = || store_error(format!("store {}: the writer is not running", self.path.display()));
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(msg).map_err(|_| closed())
    }

    fn write(&self, mut op: Op) -> Commit {
        let (reply, pending) = oneshot();
        // Deferred events go first, in this write's transaction; sending under the
        // lock keeps them ahead of any write made after them.
        let mut deferred = self.deferred.lock();
        if !deferred.is_empty() {
            if let Op::Execution { events, .. } | Op::Step { events, .. } | Op::Events(events) = &mut op {
                events.splice(0..0, deferred.drain(..));
            }
        }
        let sent = self.send(Msg::Write(op, reply));
        drop(deferred);
        match sent {
            Ok(()) => Commit::pending(pending),
            // The message (and its responder) came back inside the error and was
            // dropped, which resolved `pending` with an error already.
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn read<T>(&self, doing: &str, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.readers.lock().pop() {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = (|| {
            // One snapshot for the whole read.
            let tx = conn.unchecked_transaction().map_err(|e| sql_error(&self.path, doing, e))?;
            let out = f(&tx)?;
            drop(tx);
            Ok(out)
        })();
        let mut idle = self.readers.lock();
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }

    fn steps(&self, conn: &Connection, id: &str) -> Result<Vec<StepRow>> {
        let err = |e| sql_error(&self.path, "reading steps", e);
        let mut stmt = conn
            .prepare_cached(
                "SELECT execution_id, step_id, idx, status, output, error, attempts, started_at, finished_at, note, approval_id
                 FROM steps WHERE execution_id = ?1 ORDER BY idx, step_id",
            )
            .map_err(err)?;
        let rows = stmt.query_map([id], raw_step).map_err(err)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(err)?.into_row(&self.path)?);
        }
        Ok(out)
    }

    fn execution_rows(
        &self,
        conn: &Connection,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ExecutionRow>> {
        let err = |e| sql_error(&self.path, "reading executions", e);
        let mut stmt = conn.prepare_cached(sql).map_err(err)?;
        let rows = stmt.query_map(params, raw_execution).map_err(err)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(err)?.into_row(&self.path)?);
        }
        Ok(out)
    }

    /// Retention batches, each its own transaction, until a batch comes back short.
    fn prune_phase(&self, executions: bool, cutoff_us: i64, batch: usize) -> Result<usize> {
        let mut total = 0;
        loop {
            let (reply, pending) = oneshot();
            self.send(Msg::Prune { executions, cutoff_us, batch, reply })?;
            let (rows, full) = pending.wait_blocking()?;
            total += rows;
            if !full {
                return Ok(total);
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Readers first, so that the writer's connection is the last one and
        // checkpoints the WAL into the database as it closes.
        self.readers.lock().clear();
        // Closing the queue lets the writer drain and commit what is queued, then exit.
        drop(self.tx.take());
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

fn acquire_lock(path: &Path) -> Result<File> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(|e| {
            store_error(format!("store {}: cannot create the lock file {}: {e}", path.display(), lock_path.display()))
        })?;
    let started = Instant::now();
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            // Maybe a fork between its fork and its exec (module doc): try again shortly.
            Err(rustix::io::Errno::WOULDBLOCK) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(store_error(format!(
                    "store {}: already open by another engine (it holds {}); close that engine first or use another database",
                    path.display(),
                    lock_path.display()
                )));
            }
            Err(e) => {
                return Err(store_error(format!("store {}: cannot lock {}: {e}", path.display(), lock_path.display())));
            }
        }
    }
}

fn synchronous(durability: Durability) -> &'static str {
    match durability {
        Durability::Sync => "FULL",
        Durability::Normal => "NORMAL",
        Durability::Off => "OFF",
    }
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| sql_error(path, "opening a reader", e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| sql_error(path, "setting the busy timeout", e))?;
    Ok(conn)
}

// ---------------------------------------------------------------------------------------
// The writer thread.

struct Writer {
    conn: Connection,
    path: PathBuf,
    instance: i64,
    stats: Arc<Counters>,
    checkpointer: Option<Checkpointer>,
    /// WAL length (frames) at which the writer catches up and restarts it.
    restart_at: i64,
    /// Whether the writer committed since it was last idle (when idle, it then
    /// wakes the checkpointer).
    uncopied: bool,
    /// The store's deferred events, and when the writer commits them if no write took them.
    deferred: Arc<Mutex<Vec<PreparedEvent>>>,
    flush_due: Option<Instant>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let first = if let Some(m) = poll(&rx, POLL_BEFORE_PARK) {
                m
            } else if let Some(due) = self.flush_due {
                match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.flush_deferred();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if self.uncopied {
                match rx.recv_timeout(IDLE_CHECKPOINT) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        self.uncopied = false;
                        if self.wal_frames().is_some_and(|(log, copied)| copied < log) {
                            self.checkpoint_in_background();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            let mut queue = vec![first];
            while queue.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => queue.push(m),
                    Err(_) => break,
                }
            }
            let mut writes = Vec::new();
            for msg in queue {
                match msg {
                    Msg::Write(op, reply) => writes.push((op, reply)),
                    // Not a write: nothing queued before it needs committing first.
                    Msg::FlushSoon => self.flush_soon(),
                    other => {
                        // Keep order: what was queued before a control message commits first.
                        self.commit_group(std::mem::take(&mut writes));
                        self.control(other);
                    }
                }
            }
            self.commit_group(writes);
            self.after_commits();
        }
        self.flush_deferred();
        // Closing: the checkpointer's connection closes first, so that the writer's
        // is the last one and checkpoints the WAL into the database as it closes.
        drop(self.checkpointer.take());
    }

    fn flush_soon(&mut self) {
        self.flush_due.get_or_insert_with(|| Instant::now() + FLUSH_DELAY);
    }

    /// Commit the deferred events no write took, on their own.
    fn flush_deferred(&mut self) {
        self.flush_due = None;
        let events = std::mem::take(&mut *self.deferred.lock());
        if events.is_empty() {
            return;
        }
        let failed = match self.transaction(&[Op::Events(events)]) {
            Ok(mut results) => results.pop().and_then(Result::err),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            tracing::warn!("events not recorded: {e}");
        }
        self.after_commits();
    }

    /// `(frames in the WAL, frames already copied into the database)`, read
    /// without checkpointing anything.
    fn wal_frames(&self) -> Option<(i64, i64)> {
        self.conn
            .prepare_cached("PRAGMA wal_checkpoint(NOOP)")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))))
            .ok()
            .filter(|(log, _)| *log >= 0)
    }

    /// After a batch: wake the checkpointer when enough of the WAL is not copied,
    /// or catch up here when the WAL has grown long.
    fn after_commits(&mut self) {
        self.uncopied = true;
        let Some((log, copied)) = self.wal_frames() else { return };
        if log < RESTART_FRAMES {
            self.restart_at = RESTART_FRAMES;
        }
        let busy = self.checkpointer.as_ref().is_some_and(Checkpointer::busy);
        // While the checkpointer copies, the writer goes on (up to twice the length).
        if log >= self.restart_at && (!busy || log >= self.restart_at + RESTART_FRAMES) {
            // Copy what is left (little, the checkpointer kept up): the next write
            // then starts the WAL over. If a reader still uses the WAL, that waits
            // until the WAL has grown by RESTART_FRAMES again.
            self.checkpoint_here();
            self.restart_at = log + RESTART_FRAMES;
        } else if log - copied >= CHECKPOINT_FRAMES {
            self.checkpoint_in_background();
        }
    }

    fn checkpoint_in_background(&mut self) {
        if !self.checkpointer.as_ref().is_some_and(Checkpointer::request) {
            self.checkpoint_here();
        }
    }

    /// A PASSIVE checkpoint on the writer's connection, after any running in the
    /// background (two checkpoints cannot run at once). A failure leaves the frames
    /// in the WAL, where they are as durable; the next checkpoint retries.
    fn checkpoint_here(&mut self) {
        if let Some(c) = &self.checkpointer {
            c.wait_idle();
        }
        let _ = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }

    fn control(&mut self, msg: Msg) {
        match msg {
            Msg::Write(op, reply) => self.commit_group(vec![(op, reply)]),
            Msg::Prune { executions, cutoff_us, batch, reply } => {
                reply.send(self.prune_batch(executions, cutoff_us, batch))
            }
            Msg::FlushSoon => self.flush_soon(),
            Msg::MaxPageCount(pages, reply) => reply.send(
                self.conn
                    .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get::<_, i64>(0))
                    .map(|n| n.max(0) as u64)
                    .map_err(|e| sql_error(&self.path, "setting max_page_count", e)),
            ),
        }
    }

    fn commit_group(&mut self, group: Vec<(Op, Responder<()>)>) {
        if group.is_empty() {
            return;
        }
        let (ops, replies): (Vec<Op>, Vec<Responder<()>>) = group.into_iter().unzip();
        match self.transaction(&ops) {
            Ok(results) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    reply.send(r);
                }
            }
            Err(e) if ops.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    reply.send(Err(e));
                }
            }
            Err(_) => {
                // The shared transaction failed as a whole: give each write its own
                // transaction, hence its own answer.
                for (op, reply) in ops.iter().zip(replies) {
                    let r = self.transaction(std::slice::from_ref(op)).and_then(|mut v| v.pop().unwrap_or(Ok(())));
                    reply.send(r);
                }
            }
        }
    }

    /// One transaction over `ops`, each in a savepoint: `Ok(per-op results)` once
    /// committed, `Err` when the transaction itself failed (nothing committed).
    fn transaction(&mut self, ops: &[Op]) -> Result<Vec<Result<()>>> {
        let path = self.path.clone();
        let err = |doing: &'static str| move |e| sql_error(&path, doing, e);
        self.exec("BEGIN IMMEDIATE").map_err(err("starting a transaction"))?;
        // A write alone in its transaction needs no savepoint: if it fails, the
        // whole transaction is rolled back.
        let alone = ops.len() == 1;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            if !alone {
                self.exec("SAVEPOINT w").map_err(|e| {
                    self.abort();
                    sql_error(&self.path, "starting a savepoint", e)
                })?;
            }
            match self.apply(op) {
                Ok(()) => {
                    if !alone {
                        self.exec("RELEASE w").map_err(|e| {
                            self.abort();
                            sql_error(&self.path, "releasing a savepoint", e)
                        })?;
                    }
                    results.push(Ok(()));
                }
                Err(e) => {
                    if self.conn.is_autocommit() {
                        // SQLite rolled the whole transaction back (disk full, I/O error).
                        return Err(e);
                    }
                    if alone {
                        self.abort();
                        return Ok(vec![Err(e)]);
                    }
                    self.conn.execute_batch("ROLLBACK TO w; RELEASE w").map_err(|e2| {
                        self.abort();
                        sql_error(&self.path, "rolling back a savepoint", e2)
                    })?;
                    results.push(Err(e));
                }
            }
        }
        if let Err(e) = self.exec("COMMIT") {
            self.abort();
            return Err(sql_error(&self.path, "committing", e));
        }
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.stats.writes.fetch_add(ok, Ordering::Relaxed);
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(results)
    }

    /// A statement without results, prepared once.
    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn abort(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn insert_step(&self, step: &StepRow) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO steps (execution_id, step_id, idx, status, output, error, attempts,
                    started_at, finished_at, note, approval_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    step.execution_id,
                    step.step_id,
                    step.index,
                    step.status,
                    json(&step.output),
                    json(&step.error),
                    step.attempts,
                    step.started_at,
                    step.finished_at,
                    step.note,
                    step.approval_id,
                ])
            })
            .map(|_| ())
            .map_err(|e| sql_error(&self.path, "writing a step", e))
    }

    fn apply(&self, op: &Op) -> Result<()> {
        let err = |doing: &'static str| move |e| sql_error(&self.path, doing, e);
        match op {
            Op::Execution { execution: e, steps, events } => {
                let r = &e.row;
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO executions (id, workflow, definition, status, inputs, outputs, error, warnings,
                            tenant, session, user, timeout_ms, created_at, created_us, finished_at, finished_us)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            r.id,
                            r.workflow,
                            json(&r.definition),
                            r.status,
                            json(&r.inputs),
                            json(&r.outputs),
                            json(&r.error),
                            serde_json::to_string(&r.warnings).unwrap_or_else(|_| "[]".into()),
                            r.tenant,
                            r.session,
                            r.user,
                            r.timeout_ms.map(|t| t as i64),
                            r.created_at,
                            e.created_us,
                            r.finished_at,
                            e.finished_us,
                        ])
                    })
                    .map_err(err("writing an execution"))?;
                for step in steps {
                    self.insert_step(step)?;
                }
                self.insert_events(events)?;
            }
            Op::Step { step, status, events } => {
                // The status is rewritten only when it changes (it mostly does not):
                // an unchanged row and index cost no pages in the WAL.
                let changed = match status {
                    Some(s) => self
                        .conn
                        .prepare_cached("UPDATE executions SET status = ?2 WHERE id = ?1 AND status IS NOT ?2")
                        .and_then(|mut st| st.execute(params![step.execution_id, s])),
                    None => Ok(0),
                }
                .and_then(|n| match n {
                    0 => self
                        .conn
                        .prepare_cached("SELECT count(*) FROM executions WHERE id = ?1")
                        .and_then(|mut st| st.query_row([&step.execution_id], |r| r.get::<_, i64>(0)))
                        .map(|n| n as usize),
                    n => Ok(n),
                })
                .map_err(err("writing a step"))?;
                if changed == 0 {
                    return Err(Error::NotFound(format!(
                        "put_step: execution '{}' is not in the store (put_execution first)",
                        step.execution_id
                    )));
                }
                self.insert_step(step)?;
                self.insert_events(events)?;
            }
            Op::Events(events) => self.insert_events(events)?,
            Op::Approval(a) => {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO approvals (id, status, created, body) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![a.id, a.status, a.created, json(&a.body)]))
                    .map_err(err("writing an approval"))?;
            }
            Op::Session { tenant, session, state } => {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO session_states (tenant, session, state) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![tenant, session, json(state)]))
                    .map_err(err("writing session state"))?;
            }
        }
        Ok(())
    }

    fn insert_events(&self, events: &[PreparedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO events (instance, event_id, type, time_us, execution_id, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(|e| sql_error(&self.path, "writing events", e))?;
        for e in events {
            stmt.execute(params![self.instance, e.event_id, e.kind, e.time_us, e.execution_id, json(&e.body)])
                .map_err(|err| sql_error(&self.path, "writing events", err))?;
        }
        Ok(())
    }

    /// One retention batch in its own transaction.
    fn prune_batch(&mut self, executions: bool, cutoff_us: i64, batch: usize) -> Result<(usize, bool)> {
        let path = self.path.clone();
        let err = move |e| sql_error(&path, "pruning", e);
        let batch = batch.clamp(1, i64::MAX as usize) as i64;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(&err)?;
        let unfinished = unfinished_sql();
        let deleted = if executions {
            let ids: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "SELECT id FROM executions WHERE status NOT IN ({unfinished})
                           AND coalesce(finished_us, created_us) < ?1 LIMIT ?2"
                    ))
                    .map_err(&err)?;
                let rows = stmt.query_map(params![cutoff_us, batch], |r| r.get(0)).map_err(&err)?;
                rows.collect::<rusqlite::Result<_>>().map_err(&err)?
            };
            let mut n = 0;
            for id in &ids {
                n += tx.execute("DELETE FROM steps WHERE execution_id = ?1", [id]).map_err(&err)?;
                n += tx.execute("DELETE FROM executions WHERE id = ?1", [id]).map_err(&err)?;
            }
            (n, ids.len() as i64 == batch)
        } else {
            let n = tx
                .execute(
                    &format!(
                        "DELETE FROM events WHERE seq IN (
                       SELECT seq FROM events WHERE time_us < ?1
                         AND (execution_id IS NULL OR execution_id NOT IN
                              (SELECT id FROM executions WHERE status IN ({unfinished})))
                       LIMIT ?2)"
                    ),
                    params![cutoff_us, batch],
                )
                .map_err(&err)?;
            (n, n as i64 == batch)
        };
        tx.commit().map_err(&err)?;
        Ok(deleted)
    }
}

/// A message that arrives within `window`, polling without parking.
fn poll(rx: &mpsc::Receiver<Msg>, window: Duration) -> Option<Msg> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if start.elapsed() >= window => return None,
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checkpointer thread.

/// Runs PASSIVE checkpoints on its own connection when the writer asks.
struct Checkpointer {
    shared: Arc<CheckpointShared>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct CheckpointShared {
    state: Mutex<CheckpointState>,
    changed: Condvar,
}

#[derive(Default)]
struct CheckpointState {
    wanted: bool,
    running: bool,
    stop: bool,
}

impl Checkpointer {
    /// `None` when its connection or thread cannot be had.
    fn start(path: &Path, durability: Durability) -> Option<Checkpointer> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).ok()?;
        conn.busy_timeout(BUSY_TIMEOUT).ok()?;
        // A checkpoint syncs per its connection's setting: the same as the writer's.
        let sync = synchronous(durability);
        conn.execute_batch(&format!("PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = 0;")).ok()?;
        let shared = Arc::new(CheckpointShared::default());
        let handle = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("utp-store-checkpoint".into())
                .spawn(move || checkpoints(conn, &shared))
                .ok()?
        };
        Some(Checkpointer { shared, handle: Some(handle) })
    }

    /// Ask for a checkpoint (one pending at most); false if the thread is gone.
    fn request(&self) -> bool {
        let alive = self.handle.as_ref().is_some_and(|h| !h.is_finished());
        if alive {
            let mut state = self.shared.state.lock();
            if !state.wanted {
                state.wanted = true;
                self.shared.changed.notify_all();
            }
        }
        alive
    }

    /// Whether a checkpoint runs or is pending.
    fn busy(&self) -> bool {
        let state = self.shared.state.lock();
        state.wanted || state.running
    }

    /// Until no checkpoint runs or is pending.
    fn wait_idle(&self) {
        let mut state = self.shared.state.lock();
        while (state.wanted || state.running) && self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            self.shared.changed.wait_for(&mut state, Duration::from_millis(100));
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread (after the checkpoint it may be running) and closes its connection.
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn checkpoints(conn: Connection, shared: &CheckpointShared) {
    loop {
        {
            let mut state = shared.state.lock();
            while !state.wanted && !state.stop {
                shared.changed.wait(&mut state);
            }
            if state.stop {
                return;
            }
            state.wanted = false;
            state.running = true;
        }
        // Never blocks the writer; copies what no reader still needs. A failure
        // leaves the frames in the WAL (as durable there); the next one retries.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        shared.state.lock().running = false;
        shared.changed.notify_all();
    }
}

fn json(v: &Value) -> String {
    // Serialising a Value cannot fail (keys are strings); keep the store panic-free anyway.
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

// ---------------------------------------------------------------------------------------
// Reading rows: raw columns first, then JSON parsing with STORE errors.

struct RawExecution {
    id: String,
    workflow: String,
    definition: String,
    status: String,
    inputs: String,
    outputs: String,
    error: String,
    warnings: String,
    tenant: Option<String>,
    session: Option<String>,
    user: Option<String>,
    timeout_ms: Option<i64>,
    created_at: String,
    finished_at: Option<String>,
}

const EXECUTION_COLUMNS: &str = "id, workflow, definition, status, inputs, outputs, error, warnings, tenant, session, user, timeout_ms, created_at, finished_at";

fn raw_execution(r: &Row<'_>) -> rusqlite::Result<RawExecution> {
    Ok(RawExecution {
        id: r.get(0)?,
        workflow: r.get(1)?,
        definition: r.get(2)?,
        status: r.get(3)?,
        inputs: r.get(4)?,
        outputs: r.get(5)?,
        error: r.get(6)?,
        warnings: r.get(7)?,
        tenant: r.get(8)?,
        session: r.get(9)?,
        user: r.get(10)?,
        timeout_ms: r.get(11)?,
        created_at: r.get(12)?,
        finished_at: r.get(13)?,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| store_error(format!("store {}: {what} holds invalid JSON ({e})", path.display())))
}

impl RawExecution {
    fn into_row(self, path: &Path) -> Result<ExecutionRow> {
        let at = |col: &str| format!("execution '{}' column {col}", self.id);
        Ok(ExecutionRow {
            definition: parse_json(path, &at("definition"), &self.definition)?,
            inputs: parse_json(path, &at("inputs"), &self.inputs)?,
            outputs: parse_json(path, &at("outputs"), &self.outputs)?,
            error: parse_json(path, &at("error"), &self.error)?,
            warnings: parse_json(path, &at("warnings"), &self.warnings)?,
            timeout_ms: self.timeout_ms.map(|t| t.max(0) as u64),
            id: self.id,
            workflow: self.workflow,
            status: self.status,
            tenant: self.tenant,
            session: self.session,
            user: self.user,
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

struct RawStep {
    execution_id: String,
    step_id: String,
    index: i64,
    status: String,
    output: String,
    error: String,
    attempts: i64,
    started_at: Option<String>,
    finished_at: Option<String>,
    note: Option<String>,
    approval_id: Option<String>,
}

fn raw_step(r: &Row<'_>) -> rusqlite::Result<RawStep> {
    Ok(RawStep {
        execution_id: r.get(0)?,
        step_id: r.get(1)?,
        index: r.get(2)?,
        status: r.get(3)?,
        output: r.get(4)?,
        error: r.get(5)?,
        attempts: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        note: r.get(9)?,
        approval_id: r.get(10)?,
    })
}

impl RawStep {
    fn into_row(self, path: &Path) -> Result<StepRow> {
        let at = |col: &str| format!("step '{}' of execution '{}' column {col}", self.step_id, self.execution_id);
        Ok(StepRow {
            output: parse_json(path, &at("output"), &self.output)?,
            error: parse_json(path, &at("error"), &self.error)?,
            index: u32::try_from(self.index).unwrap_or(u32::MAX),
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            execution_id: self.execution_id,
            step_id: self.step_id,
            status: self.status,
            started_at: self.started_at,
            finished_at: self.finished_at,
            note: self.note,
            approval_id: self.approval_id,
        })
    }
}

/// An event-type pattern as SQL: `=` when literal, GLOB (same `*`/`?` meaning) otherwise.
fn kind_clause(pattern: &str) -> (&'static str, String) {
    let p = pattern.trim();
    if !p.contains(['*', '?']) {
        return ("type = ?", p.to_string());
    }
    // GLOB also knows `[...]`; make `[` literal (`]` alone is already literal).
    ("type GLOB ?", p.replace('[', "[[]"))
}

fn limit_of(limit: Option<usize>) -> i64 {
    limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX)).unwrap_or(-1)
}

impl Store for SqliteStore {
    fn put_execution_with_steps(&self, row: ExecutionRow, steps: Vec<StepRow>, events: Vec<Value>) -> Commit {
        if let Some(refused) = self.refuse_write() {
            return refused;
        }
        let prepared = prepare_execution(row)
            .and_then(|p| prepare_steps_of(&p.row.id, &steps).map(|()| p))
            .and_then(|p| Ok((p, prepare_events(events)?)));
        match prepared {
            Ok((p, events)) => self.write(Op::Execution { execution: Box::new(p), steps, events }),
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn put_step(&self, step: StepRow, execution_status: Option<String>, events: Vec<Value>) -> Commit {
        if let Some(refused) = self.refuse_write() {
            return refused;
        }
        if let Err(e) = prepare_step(&step) {
            return Commit::ready(Err(e));
        }
        match prepare_events(events) {
            Ok(events) => self.write(Op::Step { step: Box::new(step), status: execution_status, events }),
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn put_events(&self, events: Vec<Value>) -> Commit {
        if let Some(refused) = self.refuse_write() {
            return refused;
        }
        match prepare_events(events) {
            Ok(events) if events.is_empty() => Commit::ready(Ok(())),
            Ok(events) => self.write(Op::Events(events)),
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn defer_events(&self, events: Vec<Value>) {
        if self.read_only {
            return;
        }
        let events = match prepare_events(events) {
            Ok(events) => events,
            Err(e) => return tracing::warn!("events not recorded: {e}"),
        };
        let mut deferred = self.deferred.lock();
        let first = deferred.is_empty();
        deferred.extend(events);
        if first && !deferred.is_empty() {
            // Only the first one wakes the writer; it then commits whatever is
            // still deferred after FLUSH_DELAY.
            let _ = self.send(Msg::FlushSoon);
        }
    }

    fn put_approval(&self, approval: Value) -> Commit {
        if let Some(refused) = self.refuse_write() {
            return refused;
        }
        match prepare_approval(approval) {
            Ok(a) => self.write(Op::Approval(a)),
            Err(e) => Commit::ready(Err(e)),
        }
    }

    fn put_session_state(&self, tenant: &str, session: &str, state: Value) -> Commit {
        if let Some(refused) = self.refuse_write() {
            return refused;
        }
        self.write(Op::Session { tenant: tenant.to_string(), session: session.to_string(), state })
    }

    fn execution(&self, id: &str) -> Result<Option<(ExecutionRow, Vec<StepRow>)>> {
        self.read("reading an execution", |conn| {
            let raw = conn
                .prepare_cached(&format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1"))
                .and_then(|mut s| s.query_row([id], raw_execution).optional())
                .map_err(|e| sql_error(&self.path, "reading an execution", e))?;
            match raw {
                None => Ok(None),
                Some(raw) => {
                    let row = raw.into_row(&self.path)?;
                    let steps = self.steps(conn, id)?;
                    Ok(Some((row, steps)))
                }
            }
        })
    }

    fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<ExecutionRow>> {
        let range = execution_range(filter)?;
        let mut sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE 1");
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
        if let Some(s) = &filter.status {
            sql.push_str(" AND status = ?");
            args.push(s);
        }
        if let Some(s) = &filter.session {
            sql.push_str(" AND session = ?");
            args.push(s);
        }
        if let Some(t) = &range.after {
            sql.push_str(" AND created_us > ?");
            args.push(t);
        }
        if let Some(t) = &range.before {
            sql.push_str(" AND created_us < ?");
            args.push(t);
        }
        let limit = limit_of(filter.limit);
        sql.push_str(" ORDER BY created_us DESC, id DESC LIMIT ?");
        args.push(&limit);
        self.read("reading executions", |conn| self.execution_rows(conn, &sql, &args))
    }

    fn unfinished(&self) -> Result<Vec<(ExecutionRow, Vec<StepRow>)>> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE status IN ({}) ORDER BY created_us, id",
            unfinished_sql()
        );
        self.read("reading unfinished executions", |conn| {
            let rows = self.execution_rows(conn, &sql, &[])?;
            rows.into_iter()
                .map(|row| {
                    let steps = self.steps(conn, &row.id)?;
                    Ok((row, steps))
                })
                .collect()
        })
    }

    fn events(&self, filter: &EventFilter) -> Result<Vec<Value>> {
        // Reads see every event given to the store, deferred ones included.
        if !self.deferred.lock().is_empty() {
            self.write(Op::Events(Vec::new())).wait_blocking()?;
        }
        let range = event_range(filter)?;
        let mut sql = String::from("SELECT seq, body FROM events WHERE seq > ?");
        let after = filter.after_id.map(|a| i64::try_from(a).unwrap_or(i64::MAX)).unwrap_or(0);
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&after];
        if let Some(x) = &filter.execution_id {
            sql.push_str(" AND execution_id = ?");
            args.push(x);
        }
        let kind = filter.kind.as_deref().map(kind_clause);
        if let Some((clause, value)) = &kind {
            sql.push_str(" AND ");
            sql.push_str(clause);
            args.push(value);
        }
        if let Some(t) = &range.after {
            sql.push_str(" AND time_us >= ?");
            args.push(t);
        }
        if let Some(t) = &range.before {
            sql.push_str(" AND time_us < ?");
            args.push(t);
        }
        let limit = limit_of(filter.limit);
        sql.push_str(" ORDER BY seq LIMIT ?");
        args.push(&limit);
        self.read("reading events", |conn| {
            let err = |e| sql_error(&self.path, "reading events", e);
            let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
            let rows =
                stmt.query_map(args.as_slice(), |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).map_err(err)?;
            let mut out = Vec::new();
            for r in rows {
                let (seq, body) = r.map_err(err)?;
                out.push(with_seq(parse_json(&self.path, &format!("event {seq}"), &body)?, seq));
            }
            Ok(out)
        })
    }

    fn approvals(&self, pending_only: bool) -> Result<Vec<Value>> {
        let sql = if pending_only {
            "SELECT id, body FROM approvals WHERE status = 'pending' ORDER BY created, id"
        } else {
            "SELECT id, body FROM approvals ORDER BY created, id"
        };
        self.read("reading approvals", |conn| {
            let err = |e| sql_error(&self.path, "reading approvals", e);
            let mut stmt = conn.prepare_cached(sql).map_err(err)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(err)?;
            let mut out = Vec::new();
            for r in rows {
                let (id, body) = r.map_err(err)?;
                out.push(parse_json(&self.path, &format!("approval '{id}'"), &body)?);
            }
            Ok(out)
        })
    }

    fn session_states(&self) -> Result<Vec<(String, String, Value)>> {
        self.read("reading session states", |conn| {
            let err = |e| sql_error(&self.path, "reading session states", e);
            let mut stmt = conn
                .prepare_cached("SELECT tenant, session, state FROM session_states ORDER BY tenant, session")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
                .map_err(err)?;
            let mut out = Vec::new();
            for r in rows {
                let (t, s, state) = r.map_err(err)?;
                let v = parse_json(&self.path, &format!("session state ({t}, {s})"), &state)?;
                out.push((t, s, v));
            }
            Ok(out)
        })
    }

    fn prune(&self, cutoff: &str, batch: usize) -> Result<usize> {
        if self.read_only {
            return Err(self.read_only_error());
        }
        let cutoff_us = parse_time("prune cutoff", cutoff)?;
        let batch = batch.max(1);
        let executions = self.prune_phase(true, cutoff_us, batch)?;
        let events = self.prune_phase(false, cutoff_us, batch)?;
        Ok(executions + events)
    }
}
