//! The docs/design.md §7 record of an execution, as hosts receive it: from a live execution
//! ([`super::Execution::record`]) or from one a store holds. Serialises to the JSON the
//! bindings and the CLI print: `{execution_id, workflow, status, inputs?, outputs?,
//! error, warnings?, steps: {id: step}, session_id, tenant, created_at, finished_at}`.
//! Key order is the field order below; a listing leaves out inputs, outputs and step
//! outputs (`None` here), and `warnings` appear only when there are some. The
//! statuses and the recorded error (`{code, message}`) are defined here too: the live
//! execution (`execution`) and the store link both build records from them.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Value, json};

use crate::error::{Error, ErrorCode};

/// One execution's record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionRecord {
    pub execution_id: String,
    pub workflow: String,
    pub status: ExecutionStatus,
    /// The run's inputs; `None` in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Value>,
    /// The run's outputs (null until it completes); `None` in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    pub error: Option<ErrorInfo>,
    /// Outputs that could not be evaluated (they are null).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// In definition order; serialised as a map from step id to step.
    #[serde(serialize_with = "steps_by_id")]
    pub steps: Vec<StepRecord>,
    pub session_id: Option<String>,
    pub tenant: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// One step's part of an execution record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// The step's id: the key of its entry in `steps`.
    #[serde(skip)]
    pub id: String,
    pub status: StepStatus,
    /// The step's output; `None` in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Why the step was skipped, or that a fallback produced its output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The tool the step calls.
    pub tool: String,
}

impl ExecutionRecord {
    /// The record as JSON (what the bindings and the CLI hand out).
    pub fn to_json(&self) -> Value {
        // Only string keys and JSON values inside: serialising cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The step with id `id`.
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.id == id)
    }
}

fn steps_by_id<S: Serializer>(steps: &[StepRecord], serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(steps.len()))?;
    for step in steps {
        map.serialize_entry(&step.id, step)?;
    }
    map.end()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Created,
    Running,
    Suspended,
    WaitingApproval,
    Completed,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Created => "created",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Suspended => "suspended",
            ExecutionStatus::WaitingApproval => "waiting_approval",
            ExecutionStatus::Completed => "completed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<ExecutionStatus> {
        Some(match text {
            "created" => ExecutionStatus::Created,
            "running" => ExecutionStatus::Running,
            "suspended" => ExecutionStatus::Suspended,
            "waiting_approval" => ExecutionStatus::WaitingApproval,
            "completed" => ExecutionStatus::Completed,
            "failed" => ExecutionStatus::Failed,
            "cancelled" => ExecutionStatus::Cancelled,
            _ => return None,
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(self, ExecutionStatus::Completed | ExecutionStatus::Failed | ExecutionStatus::Cancelled)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StepStatus {
    pub fn parse(text: &str) -> Option<StepStatus> {
        Some(match text {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// An error as recorded: code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorInfo {
    pub fn of(e: &Error) -> ErrorInfo {
        ErrorInfo { code: e.code(), message: e.to_string() }
    }

    pub fn to_value(&self) -> Value {
        json!({"code": self.code.as_str(), "message": self.message})
    }

    pub fn to_error(&self) -> Error {
        Error::with_code(self.code, self.message.clone())
    }
}

/// `{code, message}`, the code by its name.
impl Serialize for ErrorInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("code", self.code.as_str())?;
        map.serialize_entry("message", &self.message)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(full: bool) -> ExecutionRecord {
        let step = |id: &str, status, note: Option<&str>| StepRecord {
            id: id.into(),
            status,
            output: full.then(|| json!({"n": 1})),
            error: None,
            attempts: 1,
            started_at: Some("2026-01-01T00:00:00Z".into()),
            finished_at: None,
            note: note.map(str::to_string),
            approval_id: None,
            tool: "m.t".into(),
        };
        ExecutionRecord {
            execution_id: "exe_1".into(),
            workflow: "w".into(),
            status: ExecutionStatus::WaitingApproval,
            inputs: full.then(|| json!({"a": 1})),
            outputs: full.then_some(Value::Null),
            error: Some(ErrorInfo { code: ErrorCode::ToolFailed, message: "no".into() }),
            warnings: Vec::new(),
            steps: vec![step("s2", StepStatus::Succeeded, None), step("s1", StepStatus::Skipped, Some("why"))],
            session_id: None,
            tenant: Some("t".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
        }
    }

    /// The JSON hosts have always received: key order, omitted keys, status names.
    #[test]
    fn serialises_to_the_design_json() {
        let full = serde_json::to_string(&record(true)).unwrap();
        assert_eq!(
            full,
            r#"{"execution_id":"exe_1","workflow":"w","status":"waiting_approval","inputs":{"a":1},"outputs":null,"error":{"code":"TOOL_FAILED","message":"no"},"steps":{"s2":{"status":"succeeded","output":{"n":1},"error":null,"attempts":1,"started_at":"2026-01-01T00:00:00Z","finished_at":null,"tool":"m.t"},"s1":{"status":"skipped","output":{"n":1},"error":null,"attempts":1,"started_at":"2026-01-01T00:00:00Z","finished_at":null,"note":"why","tool":"m.t"}},"session_id":null,"tenant":"t","created_at":"2026-01-01T00:00:00Z","finished_at":null}"#
        );
        let mut listed = record(false);
        listed.warnings = vec!["w1".into()];
        assert_eq!(
            serde_json::to_string(&listed).unwrap(),
            r#"{"execution_id":"exe_1","workflow":"w","status":"waiting_approval","error":{"code":"TOOL_FAILED","message":"no"},"warnings":["w1"],"steps":{"s2":{"status":"succeeded","error":null,"attempts":1,"started_at":"2026-01-01T00:00:00Z","finished_at":null,"tool":"m.t"},"s1":{"status":"skipped","error":null,"attempts":1,"started_at":"2026-01-01T00:00:00Z","finished_at":null,"note":"why","tool":"m.t"}},"session_id":null,"tenant":"t","created_at":"2026-01-01T00:00:00Z","finished_at":null}"#
        );
        assert_eq!(listed.to_json().to_string(), serde_json::to_string(&listed).unwrap());
        for status in ["created", "running", "suspended", "waiting_approval", "completed", "failed", "cancelled"] {
            let parsed = ExecutionStatus::parse(status).unwrap();
            assert_eq!((serde_json::to_value(parsed).unwrap(), parsed.as_str()), (json!(status), status));
        }
        for status in ["pending", "running", "succeeded", "failed", "skipped"] {
            let parsed = StepStatus::parse(status).unwrap();
            assert_eq!((serde_json::to_value(parsed).unwrap(), parsed.as_str()), (json!(status), status));
        }
    }
}
