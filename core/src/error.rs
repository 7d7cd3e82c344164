//! The one error type of the runtime, with stable codes shared by every binding.

use std::fmt;

/// Stable error codes. Append-only: the numeric values are part of the C ABI and
/// the names are part of the Python (`.code`) and Node (`ERR_UTP_<CODE>`) APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorCode {
    InvalidArgument = 1,
    NotFound = 2,
    AlreadyExists = 3,
    InvalidManual = 4,
    ValidationFailed = 5,
    VariableNotFound = 6,
    PermissionDenied = 7,
    RateLimited = 8,
    ApprovalRequired = 9,
    Timeout = 10,
    Cancelled = 11,
    Transport = 12,
    ToolFailed = 13,
    Security = 14,
    Store = 15,
    Planner = 16,
    Sandbox = 17,
    Internal = 18,
    Panic = 19,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 19] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::InvalidManual,
        ErrorCode::ValidationFailed,
        ErrorCode::VariableNotFound,
        ErrorCode::PermissionDenied,
        ErrorCode::RateLimited,
        ErrorCode::ApprovalRequired,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::Transport,
        ErrorCode::ToolFailed,
        ErrorCode::Security,
        ErrorCode::Store,
        ErrorCode::Planner,
        ErrorCode::Sandbox,
        ErrorCode::Internal,
        ErrorCode::Panic,
    ];

    /// The SCREAMING_SNAKE name used by every binding.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::InvalidManual => "INVALID_MANUAL",
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::VariableNotFound => "VARIABLE_NOT_FOUND",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::ApprovalRequired => "APPROVAL_REQUIRED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Transport => "TRANSPORT",
            ErrorCode::ToolFailed => "TOOL_FAILED",
            ErrorCode::Security => "SECURITY",
            ErrorCode::Store => "STORE",
            ErrorCode::Planner => "PLANNER",
            ErrorCode::Sandbox => "SANDBOX",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Panic => "PANIC",
        }
    }

    pub fn from_i32(value: i32) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as i32 == value)
    }

    /// The code named `name` (as [`ErrorCode::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every fallible operation of the runtime returns this error.
///
/// Messages say what was expected, what was found and where; they never carry a
/// secret (resolved variables and auth values are never formatted into them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidManual(String),
    #[error("{0}")]
    ValidationFailed(String),
    #[error(
        "variable '{variable}' not found (needed by manual '{manual}'); set it in config `variables`, a dotenv file or the environment"
    )]
    VariableNotFound { variable: String, manual: String },
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Security(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Cancelled(String),
    /// The tool ran and failed: HTTP status outside 2xx (`status` set, with the
    /// server's `Retry-After` when it sent one), non-zero exit of a CLI command, or an
    /// error raised by a native handler.
    #[error("{message}")]
    ToolFailed { message: String, status: Option<u16>, retry_after: Option<std::time::Duration> },
    /// A permission or a rule denied the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A rate limit was hit; a call may pass again after `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: std::time::Duration },
    /// The call needs a human approval first: `approve(approval_id)`.
    #[error("{message}")]
    ApprovalRequired { message: String, approval_id: String },
    /// A code reserved for later layers (store, planner...), with its message.
    #[error("{message}")]
    Other { code: ErrorCode, message: String },
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::InvalidManual(_) => ErrorCode::InvalidManual,
            Error::ValidationFailed(_) => ErrorCode::ValidationFailed,
            Error::VariableNotFound { .. } => ErrorCode::VariableNotFound,
            Error::Transport(_) => ErrorCode::Transport,
            Error::Security(_) => ErrorCode::Security,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::Cancelled(_) => ErrorCode::Cancelled,
            Error::ToolFailed { .. } => ErrorCode::ToolFailed,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::ApprovalRequired { .. } => ErrorCode::ApprovalRequired,
            Error::Other { code, .. } => *code,
        }
    }

    /// An error with an arbitrary code; used by the bindings (e.g. `PANIC`).
    pub fn with_code(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Other { code, message: message.into() }
    }

    /// The same error with `context: ` before its message (the code is kept), for an
    /// error that needs to say where it arose, such as which config entry.
    pub fn with_context(self, context: &str) -> Error {
        let prefixed = |m: String| format!("{context}: {m}");
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(prefixed(m)),
            Error::NotFound(m) => Error::NotFound(prefixed(m)),
            Error::AlreadyExists(m) => Error::AlreadyExists(prefixed(m)),
            Error::InvalidManual(m) => Error::InvalidManual(prefixed(m)),
            Error::ValidationFailed(m) => Error::ValidationFailed(prefixed(m)),
            Error::Transport(m) => Error::Transport(prefixed(m)),
            Error::Security(m) => Error::Security(prefixed(m)),
            Error::Internal(m) => Error::Internal(prefixed(m)),
            Error::Timeout(m) => Error::Timeout(prefixed(m)),
            Error::Cancelled(m) => Error::Cancelled(prefixed(m)),
            Error::PermissionDenied(m) => Error::PermissionDenied(prefixed(m)),
            Error::ToolFailed { message, status, retry_after } => {
                Error::ToolFailed { message: prefixed(message), status, retry_after }
            }
            Error::Other { code, message } => Error::Other { code, message: prefixed(message) },
            // Their messages already say where (the variable and manual; the approval).
            other => other,
        }
    }

    /// A `TOOL_FAILED` error without an HTTP status.
    pub fn tool_failed(message: impl Into<String>) -> Error {
        Error::ToolFailed { message: message.into(), status: None, retry_after: None }
    }

    /// How long until a call may pass: `RATE_LIMITED`, or a tool's HTTP answer
    /// with `Retry-After` (429, 503).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            Error::ToolFailed { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// For `APPROVAL_REQUIRED`: the approval to grant with `approve(id)`.
    pub fn approval_id(&self) -> Option<&str> {
        match self {
            Error::ApprovalRequired { approval_id, .. } => Some(approval_id),
            _ => None,
        }
    }

    /// The HTTP status of a `TOOL_FAILED` error from an HTTP-family tool.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::ToolFailed { status, .. } => *status,
            _ => None,
        }
    }

    /// A panic caught at a language boundary (`catch_unwind`'s payload) as a `PANIC`
    /// error; `library` names where it was caught ("libutp", "utp-runtime"...).
    pub fn from_panic(payload: &(dyn std::any::Any + Send), library: &str) -> Error {
        let detail = if let Some(s) = payload.downcast_ref::<&str>() {
            s
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.as_str()
        } else {
            "unknown panic payload"
        };
        Error::with_code(ErrorCode::Panic, format!("panic in {library}: {detail}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as i32, i as i32 + 1);
            assert_eq!(ErrorCode::from_i32(*code as i32), Some(*code));
        }
        assert_eq!(ErrorCode::from_i32(0), None);
        assert_eq!(ErrorCode::Panic.as_str(), "PANIC");
    }

    #[test]
    fn panic_payloads_become_panic_errors() {
        let e = Error::from_panic(&"boom", "libutp");
        assert_eq!((e.code(), e.to_string().as_str()), (ErrorCode::Panic, "panic in libutp: boom"));
        let e = Error::from_panic(&String::from("owned"), "x");
        assert_eq!(e.to_string(), "panic in x: owned");
        assert_eq!(Error::from_panic(&42_u8, "x").to_string(), "panic in x: unknown panic payload");
    }

    #[test]
    fn variable_error_names_variable_and_manual() {
        let e = Error::VariableNotFound { variable: "my__api_KEY".into(), manual: "my_api".into() };
        assert_eq!(e.code(), ErrorCode::VariableNotFound);
        assert!(e.to_string().contains("my__api_KEY"));
        assert!(e.to_string().contains("my_api"));
    }
}
