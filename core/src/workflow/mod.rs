//! Workflows (docs/design.md §7): definitions, `${{ }}` expressions, validation, execution
//! records, the retry and circuit-breaker policies, sessions. The executor that runs
//! them through the engine's pipeline is `engine::runner`; this module knows no engine.

pub mod breaker;
pub mod definition;
pub mod execution;
pub mod expr;
mod options;
mod record;
pub mod retry;
mod sessions;

pub use definition::Workflow;
pub use execution::Execution;
pub use options::{RunOptions, WorkflowSource};
pub use record::{ErrorInfo, ExecutionRecord, ExecutionStatus, StepRecord, StepStatus};
pub use sessions::Sessions;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// What the engine keeps for workflows.
pub struct WorkflowRuntime {
    pub executions: Executions,
    pub sessions: Sessions,
    pub breakers: breaker::Breakers,
    /// Cancelled by `Engine::close`: runs stop where they are, none starts.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl WorkflowRuntime {
    /// From the config's `breakers` section.
    pub fn from_config(other: &serde_json::Map<String, serde_json::Value>) -> Result<WorkflowRuntime, String> {
        Ok(WorkflowRuntime {
            executions: Executions::default(),
            sessions: Sessions::default(),
            breakers: breaker::Breakers::from_config(other.get("breakers"))?,
            shutdown: tokio_util::sync::CancellationToken::new(),
        })
    }
}

/// Finished executions kept in memory (the SQLite store keeps them all).
const KEEP_FINISHED: usize = 10_000;

/// Executions of this engine, by id; finished ones beyond `KEEP_FINISHED` are forgotten, oldest first.
#[derive(Default)]
pub struct Executions {
    by_id: RwLock<HashMap<String, Arc<Execution>>>,
    finished: Mutex<VecDeque<String>>,
}

impl Executions {
    pub fn insert(&self, exec: Arc<Execution>) {
        self.by_id.write().insert(exec.id.clone(), exec);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Execution>> {
        self.by_id.read().get(id).cloned()
    }

    /// Record that `id` finished; forget the oldest finished ones past the bound.
    pub fn finished(&self, id: &str) {
        let mut finished = self.finished.lock();
        finished.push_back(id.to_string());
        if finished.len() > KEEP_FINISHED {
            let excess = finished.len() - KEEP_FINISHED;
            let drop: Vec<String> = finished.drain(..excess).collect();
            let mut map = self.by_id.write();
            for id in drop {
                map.remove(&id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.read().is_empty()
    }

    pub fn all(&self) -> Vec<Arc<Execution>> {
        self.by_id.read().values().cloned().collect()
    }
}
