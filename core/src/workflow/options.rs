//! What a host passes to run a workflow: where its definition comes from, and how to run it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::definition::Workflow;

/// Where a workflow definition comes from.
#[derive(Debug, Clone)]
pub enum WorkflowSource {
    /// A definition already parsed (a dict in Python, an object in JS).
    Definition(Value),
    /// YAML or JSON text.
    Text(String),
    Path(PathBuf),
    /// A workflow validated earlier (`Engine::workflow`).
    Compiled(Arc<Workflow>),
}

impl WorkflowSource {
    /// A string as the bindings and the CLI receive it: a path when it names a file,
    /// else YAML/JSON text.
    pub fn from_text(text: &str) -> WorkflowSource {
        let trimmed = text.trim();
        if !trimmed.contains('\n') && !trimmed.starts_with('{') && std::path::Path::new(trimmed).is_file() {
            return WorkflowSource::Path(PathBuf::from(trimmed));
        }
        if !trimmed.contains('\n') && !trimmed.starts_with('{') && !trimmed.contains(':') {
            // Neither a file nor a definition: say which file was not found.
            return WorkflowSource::Path(PathBuf::from(trimmed));
        }
        WorkflowSource::Text(text.to_string())
    }
}

/// How to run a workflow. Everything is optional.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub tenant: Option<String>,
    /// Session whose state the run reads and writes.
    pub session: Option<String>,
    pub user: Option<String>,
    /// Bounds the whole run; wins over the workflow's `timeout`.
    pub timeout: Option<Duration>,
    /// Cancelling this token cancels the run.
    pub cancel: Option<CancellationToken>,
}
