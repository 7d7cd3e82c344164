//! Which store a command opens: `--db PATH` (default `.utp/utp.db`), `--db memory`,
//! or the config's `store` when `--db` is not given.

use std::path::{Path, PathBuf};

use serde_json::Value;
use utp_core::{Config, Engine, StoreConfig};

/// The default database, relative to the working directory.
pub const DEFAULT_DB: &str = ".utp/utp.db";

/// What a command does with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing to record (discover, tools, check): no store is opened.
    None,
    /// Runs things: they are recorded (call, run, approve, resume).
    ReadWrite,
    /// Reads the history (executions, show, events, approvals): writes nothing,
    /// resumes nothing, never creates the database.
    ReadOnly,
}

/// The database a command ended up with.
#[derive(Debug, Clone)]
pub struct Db {
    /// The SQLite file, `None` for memory.
    pub path: Option<PathBuf>,
    /// A read-only command named a database that does not exist yet (it reads as empty).
    pub missing: bool,
    /// Opened for reading only.
    pub read_only: bool,
}

impl Db {
    /// `in PATH` for messages, empty for memory.
    pub fn place(&self) -> String {
        match &self.path {
            Some(p) if self.missing => format!(" in {} (nothing recorded there yet)", p.display()),
            Some(p) => format!(" in {}", p.display()),
            None => String::new(),
        }
    }
}

/// Point the config's `store` at the database this command uses.
///
/// An explicit `--db` wins (keeping the config's durability and retention); without
/// it, the config's `store` is used when it has one, else [`DEFAULT_DB`].
pub fn choose(config: &mut Config, db: Option<&str>, access: Access) -> Result<Db, String> {
    if access == Access::None {
        config.other.insert("store".into(), "memory".into());
        return Ok(Db { path: None, missing: false, read_only: false });
    }
    match db.map(str::trim) {
        Some("") => return Err("[INVALID_ARGUMENT] --db needs a path (or `memory`)".into()),
        Some("memory") => {
            config.other.insert("store".into(), "memory".into());
        }
        Some(path) => {
            let url = format!("sqlite:{}", absolute(Path::new(path)).display());
            match config.other.get_mut("store") {
                Some(Value::Object(m)) => {
                    m.remove("path");
                    m.insert("url".into(), url.into());
                }
                _ => {
                    config.other.insert("store".into(), url.into());
                }
            }
        }
        None => {
            if config.other.get("store").is_none_or(Value::is_null) {
                let url = format!("sqlite:{}", absolute(Path::new(DEFAULT_DB)).display());
                config.other.insert("store".into(), url.into());
            }
        }
    }
    let store = StoreConfig::from_config(config).map_err(|e| format!("[{}] {e}", e.code()))?;
    let Some(path) = store.url.trim().strip_prefix("sqlite:").map(PathBuf::from) else {
        return Ok(Db { path: None, missing: false, read_only: false });
    };
    let mut missing = false;
    match access {
        // Nothing recorded yet (no file, or one a process was killed creating): read an
        // empty history rather than create a file.
        Access::ReadOnly if std::fs::metadata(&path).map_or(true, |m| m.is_file() && m.len() == 0) => {
            config.other.insert("store".into(), "memory".into());
            missing = true;
        }
        Access::ReadOnly => read_only(config),
        _ => prepare_folder(&path),
    }
    Ok(Db { path: Some(path), missing, read_only: access == Access::ReadOnly })
}

/// A relative path against the working directory.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
}

/// A `.utp` folder the CLI creates gets a `.gitignore` of `*`, so the history stays
/// out of version control (as `.pytest_cache` does).
fn prepare_folder(path: &Path) {
    let Some(dir) = path.parent() else { return };
    if dir.exists() || dir.file_name().is_none_or(|n| n != ".utp") {
        return;
    }
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(dir.join(".gitignore"), "# Created by utp: run history (SQLite).\n*\n");
    }
}

/// Inspection only: the store is opened read-only (no lock, so it works while another
/// process runs things on it; nothing written, nothing resumed).
fn read_only(config: &mut Config) {
    match config.other.get_mut("store") {
        Some(Value::Object(m)) => {
            m.insert("read_only".into(), true.into());
        }
        Some(Value::String(url)) => {
            let url = url.clone();
            config.other.insert("store".into(), serde_json::json!({"url": url, "read_only": true}));
        }
        _ => {}
    }
}

/// `Engine::new` with the STORE errors a CLI user can act on spelled out.
pub fn engine(config: Config, db: &mut Db) -> Result<Engine, String> {
    let fallback = db.read_only.then(|| config.clone());
    match (Engine::new(config), fallback) {
        // A database whose creation was cut short (a process killed while creating it)
        // holds no schema yet: nothing was recorded, so the history is empty.
        (Err(e), Some(mut empty))
            if e.code() == utp_core::ErrorCode::Store && e.to_string().contains("no UTP schema yet") =>
        {
            empty.other.insert("store".into(), "memory".into());
            db.missing = true;
            engine_or_message(Engine::new(empty), db)
        }
        (opened, _) => engine_or_message(opened, db),
    }
}

fn engine_or_message(opened: utp_core::Result<Engine>, db: &Db) -> Result<Engine, String> {
    opened.map_err(|e| {
        let mut message = format!("[{}] {e}", e.code());
        if e.code() == utp_core::ErrorCode::Store && message.contains("already open") {
            message.push_str(
                " (another utp process or engine is using this database: wait for it to finish, or pass --db OTHER_PATH or --db memory)",
            );
        } else if e.code() == utp_core::ErrorCode::Store {
            if let Some(path) = &db.path {
                message.push_str(&format!(" (database {})", path.display()));
            }
        }
        message
    })
}
