//! `text` and `file` tools: as python-utcp, the call returns the text itself.
//! Files are confined to `calls.file_root` (default: the config's folder, else the
//! current directory): `..` and symlinks cannot leave it.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Transports;
use crate::error::{Error, Result};
use crate::manual::{FileTemplate, TextTemplate};
use crate::registry::RegisteredTool;

pub(crate) async fn call_text(t: &Transports, tool: &RegisteredTool, tpl: &TextTemplate) -> Result<Value> {
    // A text template without content but with a (legacy) `file_path` reads the file.
    if tpl.content.is_empty() {
        if let Some(path) = tpl.extra.get("file_path").and_then(Value::as_str) {
            return read(t, tool, path).await;
        }
    }
    Ok(Value::String(tpl.content.clone()))
}

pub(crate) async fn call_file(t: &Transports, tool: &RegisteredTool, tpl: &FileTemplate) -> Result<Value> {
    read(t, tool, &tpl.file_path).await
}

async fn read(t: &Transports, tool: &RegisteredTool, path: &str) -> Result<Value> {
    let full = confine(&t.file_root, Path::new(path)).map_err(|e| match e {
        Error::Security(m) => Error::Security(format!("tool '{}': {m}", tool.name)),
        Error::NotFound(m) => Error::NotFound(format!("tool '{}': {m}", tool.name)),
        other => other,
    })?;
    let max = t.config.calls.max_response_size;
    let meta = tokio::fs::metadata(&full)
        .await
        .map_err(|e| Error::NotFound(format!("tool '{}': cannot read {path}: {e}", tool.name)))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!("tool '{}': {path} is not a file", tool.name)));
    }
    if meta.len() > max {
        return Err(Error::Transport(format!(
            "tool '{}': {path} is over the {max} byte cap (calls.max_response_size)",
            tool.name
        )));
    }
    let bytes = tokio::fs::read(&full)
        .await
        .map_err(|e| Error::Transport(format!("tool '{}': cannot read {path}: {e}", tool.name)))?;
    Ok(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `path` (relative to `root`, or absolute) resolved with symlinks followed; it
/// must stay inside `root`.
pub fn confine(root: &Path, path: &Path) -> Result<PathBuf> {
    let root = std::fs::canonicalize(root)
        .map_err(|e| Error::NotFound(format!("file root {} is not usable: {e}", root.display())))?;
    let joined = if path.is_absolute() { path.to_path_buf() } else { root.join(path) };
    let full =
        std::fs::canonicalize(&joined).map_err(|_| Error::NotFound(format!("{}: no such file", path.display())))?;
    if !full.starts_with(&root) {
        return Err(Error::Security(format!(
            "{} is outside the file root {} (calls.file_root)",
            path.display(),
            root.display()
        )));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("ok.txt"), "x").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
        assert!(confine(&root, Path::new("ok.txt")).is_ok());
        assert_eq!(confine(&root, Path::new("../secret.txt")).unwrap_err().code(), crate::ErrorCode::Security);
        assert_eq!(confine(&root, Path::new("link.txt")).unwrap_err().code(), crate::ErrorCode::Security);
        assert_eq!(confine(&root, &dir.path().join("secret.txt")).unwrap_err().code(), crate::ErrorCode::Security);
        assert_eq!(confine(&root, Path::new("nope.txt")).unwrap_err().code(), crate::ErrorCode::NotFound);
    }
}
