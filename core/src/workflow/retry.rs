//! Retry policy of a workflow step (docs/design.md §7): exponential backoff with full
//! jitter, and which errors may be retried at all.
//!
//! The policy only computes delays; the executor sleeps, bounds the delay by the
//! workflow deadline and supplies the random number, so everything here is
//! deterministic and testable.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::parse_duration;
use crate::error::{Error, ErrorCode};

/// `retry:` of a workflow step, e.g.
/// `{max_attempts: 3, initial_delay: 200ms, factor: 2, max_delay: 5s, jitter: full}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySpec {
    /// Total attempts, the first one included.
    pub max_attempts: u32,
    #[serde(deserialize_with = "de_duration")]
    pub initial_delay: Duration,
    pub factor: f64,
    #[serde(deserialize_with = "de_duration")]
    pub max_delay: Duration,
    pub jitter: Jitter,
}

/// How the computed backoff is randomised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// A uniform value in `[0, backoff]` (AWS "full jitter"): spreads retries of
    /// many clients so they do not hit a recovering service in lockstep.
    #[default]
    Full,
    None,
}

impl Default for RetrySpec {
    fn default() -> RetrySpec {
        RetrySpec {
            max_attempts: 3,
            initial_delay: Duration::from_millis(200),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: Jitter::Full,
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    parse_duration(&v).map_err(serde::de::Error::custom)
}

impl RetrySpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts < 1 {
            return Err(format!(
                "retry.max_attempts must be at least 1 (the first attempt counts), found {}",
                self.max_attempts
            ));
        }
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(format!("retry.factor must be a finite number >= 1, found {}", self.factor));
        }
        if self.max_delay < self.initial_delay {
            return Err(format!(
                "retry.max_delay ({:?}) must not be shorter than retry.initial_delay ({:?})",
                self.max_delay, self.initial_delay
            ));
        }
        Ok(())
    }

    /// Delay before attempt `next_attempt` (2 = the first retry; 0 or 1 → no delay):
    /// `initial_delay * factor^(next_attempt-2)` capped at `max_delay`, then with
    /// full jitter scaled by `rand01` (uniform in `[0, 1)`, clamped into it).
    pub fn backoff(&self, next_attempt: u32, rand01: f64) -> Duration {
        if next_attempt < 2 {
            return Duration::ZERO;
        }
        let cap = self.max_delay.as_nanos() as f64;
        // Nanoseconds in f64: exact for the usual integer factors, and overflow
        // (huge attempt numbers) becomes +inf, which the cap absorbs.
        let exp = next_attempt.saturating_sub(2).min(i32::MAX as u32) as i32;
        let raw = self.initial_delay.as_nanos() as f64 * self.factor.powi(exp);
        let capped = if raw.is_nan() { cap } else { raw.min(cap) };
        let nanos = match self.jitter {
            Jitter::None => capped,
            Jitter::Full => {
                let r = if rand01.is_nan() { 0.0 } else { rand01.clamp(0.0, 1.0) };
                capped * r
            }
        };
        nanos_to_duration(nanos.round())
    }

    /// The delay to wait before attempt `next_attempt` after `error`: `None` when
    /// the error must not be retried or `next_attempt` exceeds `max_attempts`;
    /// otherwise the larger of the backoff and the error's retry-after hint (a
    /// server or limiter that says "not before" is believed over our own guess).
    /// The caller bounds it by the workflow deadline.
    pub fn delay_after(&self, error: &Error, next_attempt: u32, rand01: f64) -> Option<Duration> {
        if next_attempt > self.max_attempts || !is_retryable(error) {
            return None;
        }
        let backoff = self.backoff(next_attempt, rand01);
        Some(match retry_after_hint(error) {
            Some(hint) => backoff.max(hint),
            None => backoff,
        })
    }
}

fn nanos_to_duration(nanos: f64) -> Duration {
    // `max_delay` comes from `parse_duration` (≤ 1e9 s), so this stays far below
    // u64::MAX nanoseconds; the `as` cast saturates anyway.
    let n = nanos.max(0.0) as u64;
    Duration::from_nanos(n)
}

/// Whether an error may be retried (docs/design.md §7). Policy denials, validation and
/// argument errors, cancellation, missing things, security refusals and HTTP 4xx
/// (except 408 Request Timeout and 429 Too Many Requests) fail the same way
/// every time; everything else, including codes added later, is retried.
pub fn is_retryable(error: &Error) -> bool {
    match error.code() {
        ErrorCode::PermissionDenied
        | ErrorCode::ApprovalRequired
        | ErrorCode::ValidationFailed
        | ErrorCode::Cancelled
        | ErrorCode::InvalidArgument
        | ErrorCode::NotFound
        | ErrorCode::InvalidManual
        | ErrorCode::VariableNotFound
        | ErrorCode::Security => false,
        _ => !matches!(error.http_status(), Some(s) if (400..500).contains(&s) && s != 408 && s != 429),
    }
}

/// The "not before" hint of the server (`Retry-After` on a `TOOL_FAILED`) or of
/// our limiter (`RATE_LIMITED`).
pub fn retry_after_hint(error: &Error) -> Option<Duration> {
    error.retry_after()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_error(status: u16) -> Error {
        Error::ToolFailed { message: format!("HTTP {status}"), status: Some(status), retry_after: None }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn no_jitter() -> RetrySpec {
        RetrySpec { jitter: Jitter::None, ..RetrySpec::default() }
    }

    #[test]
    fn defaults() {
        let s = RetrySpec::default();
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.initial_delay, ms(200));
        assert_eq!(s.factor, 2.0);
        assert_eq!(s.max_delay, Duration::from_secs(30));
        assert_eq!(s.jitter, Jitter::Full);
        assert_eq!(s.validate(), Ok(()));
        let empty: RetrySpec = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, s);
    }

    #[test]
    fn parses_yaml_with_unit_strings() {
        let s: RetrySpec = serde_yaml_ng::from_str(
            "{max_attempts: 5, initial_delay: 200ms, factor: 1.5, max_delay: 5s, jitter: none}",
        )
        .unwrap();
        assert_eq!(
            s,
            RetrySpec {
                max_attempts: 5,
                initial_delay: ms(200),
                factor: 1.5,
                max_delay: ms(5000),
                jitter: Jitter::None
            }
        );
        let s: RetrySpec = serde_yaml_ng::from_str("max_delay: 1m\njitter: full").unwrap();
        assert_eq!((s.max_delay, s.jitter, s.max_attempts), (Duration::from_secs(60), Jitter::Full, 3));
    }

    #[test]
    fn parses_json_with_numbers_as_seconds() {
        let s: RetrySpec = serde_json::from_str(r#"{"initial_delay": 0.5, "max_delay": 10, "factor": 3}"#).unwrap();
        assert_eq!((s.initial_delay, s.max_delay, s.factor), (ms(500), Duration::from_secs(10), 3.0));
        let s: RetrySpec = serde_json::from_str(r#"{"initial_delay": "5s"}"#).unwrap();
        assert_eq!(s.initial_delay, Duration::from_secs(5));
    }

    #[test]
    fn rejects_bad_documents() {
        for (doc, needle) in [
            (r#"{"max_attempt": 3}"#, "max_attempt"),
            (r#"{"jitter": "half"}"#, "half"),
            (r#"{"initial_delay": "soon"}"#, "soon"),
            (r#"{"max_delay": -1}"#, "duration"),
            (r#"{"max_attempts": -1}"#, "-1"),
        ] {
            let err = serde_json::from_str::<RetrySpec>(doc).unwrap_err().to_string();
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (RetrySpec { max_attempts: 0, ..Default::default() }, "max_attempts"),
            (RetrySpec { factor: 0.5, ..Default::default() }, "factor"),
            (RetrySpec { factor: f64::NAN, ..Default::default() }, "factor"),
            (RetrySpec { factor: f64::INFINITY, ..Default::default() }, "factor"),
            (RetrySpec { initial_delay: ms(500), max_delay: ms(100), ..Default::default() }, "max_delay"),
        ];
        for (spec, field) in bad {
            let err = spec.validate().unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        assert_eq!(RetrySpec { max_attempts: 1, factor: 1.0, ..Default::default() }.validate(), Ok(()));
    }

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let s = RetrySpec { max_delay: ms(1000), ..no_jitter() };
        let got: Vec<_> = (1..=7).map(|a| s.backoff(a, 0.5)).collect();
        assert_eq!(got, [ms(0), ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]);
        assert_eq!(s.backoff(0, 0.5), Duration::ZERO);
        // No overflow for absurd attempt numbers.
        assert_eq!(s.backoff(u32::MAX, 0.5), ms(1000));
        let flat = RetrySpec { factor: 1.0, ..no_jitter() };
        assert_eq!(flat.backoff(10, 0.0), ms(200));
        let frac = RetrySpec { factor: 1.5, initial_delay: ms(100), ..no_jitter() };
        assert_eq!(frac.backoff(4, 0.0), ms(225));
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_cap() {
        let s = RetrySpec { max_delay: ms(1000), ..RetrySpec::default() };
        assert_eq!(s.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(s.backoff(3, 0.5), ms(200));
        let near = s.backoff(3, 0.999_999);
        assert!(near <= ms(400) && near > ms(399), "{near:?}");
        assert_eq!(s.backoff(10, 0.25), ms(250));
        // Out-of-range or NaN randoms are clamped, never panic.
        assert_eq!(s.backoff(3, -3.0), Duration::ZERO);
        assert_eq!(s.backoff(3, 7.0), ms(400));
        assert_eq!(s.backoff(3, f64::NAN), Duration::ZERO);
        for i in 0..100 {
            let r = i as f64 / 100.0;
            for attempt in 2..12 {
                assert!(s.backoff(attempt, r) <= ms(1000));
            }
        }
    }

    fn sample(code: ErrorCode) -> Error {
        match code {
            ErrorCode::InvalidArgument => Error::InvalidArgument("x".into()),
            ErrorCode::NotFound => Error::NotFound("x".into()),
            ErrorCode::InvalidManual => Error::InvalidManual("x".into()),
            ErrorCode::ValidationFailed => Error::ValidationFailed("x".into()),
            ErrorCode::VariableNotFound => Error::VariableNotFound { variable: "v".into(), manual: "m".into() },
            ErrorCode::PermissionDenied => Error::PermissionDenied("x".into()),
            ErrorCode::RateLimited => Error::RateLimited { message: "x".into(), retry_after: ms(10) },
            ErrorCode::ApprovalRequired => Error::ApprovalRequired { message: "x".into(), approval_id: "a".into() },
            ErrorCode::Timeout => Error::Timeout("x".into()),
            ErrorCode::Cancelled => Error::Cancelled("x".into()),
            ErrorCode::Transport => Error::Transport("x".into()),
            ErrorCode::ToolFailed => Error::tool_failed("x"),
            ErrorCode::Security => Error::Security("x".into()),
            ErrorCode::Internal => Error::Internal("x".into()),
            other => Error::with_code(other, "x"),
        }
    }

    #[test]
    fn classification_of_every_code() {
        for code in ErrorCode::ALL {
            let expected = match code {
                ErrorCode::InvalidArgument
                | ErrorCode::NotFound
                | ErrorCode::InvalidManual
                | ErrorCode::ValidationFailed
                | ErrorCode::VariableNotFound
                | ErrorCode::PermissionDenied
                | ErrorCode::ApprovalRequired
                | ErrorCode::Cancelled
                | ErrorCode::Security => false,
                ErrorCode::RateLimited
                | ErrorCode::Timeout
                | ErrorCode::Transport
                | ErrorCode::ToolFailed
                | ErrorCode::AlreadyExists
                | ErrorCode::Store
                | ErrorCode::Planner
                | ErrorCode::Sandbox
                | ErrorCode::Internal
                | ErrorCode::Panic => true,
            };
            let e = sample(code);
            assert_eq!(e.code(), code);
            assert_eq!(is_retryable(&e), expected, "{code}");
            // The generic constructor must classify the same as the typed variant.
            assert_eq!(is_retryable(&Error::with_code(code, "x")), expected, "{code} via with_code");
        }
    }

    #[test]
    fn http_statuses_of_tool_failures() {
        for s in [400, 401, 403, 404, 409, 422, 499] {
            assert!(!is_retryable(&http_error(s)), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable(&http_error(s)), "{s}");
        }
    }

    #[test]
    fn delay_after_respects_classification_attempts_and_hints() {
        let s = RetrySpec { max_delay: ms(1000), ..no_jitter() };
        assert_eq!(s.delay_after(&Error::Timeout("t".into()), 2, 0.3), Some(ms(200)));
        assert_eq!(s.delay_after(&Error::Timeout("t".into()), 3, 0.3), Some(ms(400)));
        assert_eq!(s.delay_after(&Error::Timeout("t".into()), 4, 0.3), None, "beyond max_attempts");
        assert_eq!(s.delay_after(&Error::PermissionDenied("no".into()), 2, 0.3), None);
        assert_eq!(s.delay_after(&http_error(404), 2, 0.3), None);
        // A retry-after hint longer than the backoff wins, even beyond max_delay...
        let limited = Error::RateLimited { message: "slow down".into(), retry_after: ms(2500) };
        assert_eq!(retry_after_hint(&limited), Some(ms(2500)));
        assert_eq!(s.delay_after(&limited, 2, 0.3), Some(ms(2500)));
        // ...a shorter one does not shorten it.
        let brief = Error::RateLimited { message: "x".into(), retry_after: ms(50) };
        assert_eq!(s.delay_after(&brief, 3, 0.3), Some(ms(400)));
        assert_eq!(retry_after_hint(&Error::Timeout("t".into())), None);
        // With full jitter the hint is still a floor.
        let jittered = RetrySpec { max_delay: ms(1000), ..RetrySpec::default() };
        assert_eq!(jittered.delay_after(&limited, 2, 0.0), Some(ms(2500)));
        // A server's Retry-After on a 503 / 429 counts the same way.
        let busy = Error::ToolFailed { message: "busy".into(), status: Some(503), retry_after: Some(ms(3000)) };
        assert_eq!(retry_after_hint(&busy), Some(ms(3000)));
        assert_eq!(s.delay_after(&busy, 2, 0.3), Some(ms(3000)));
        let too_many = Error::ToolFailed { message: "slow".into(), status: Some(429), retry_after: Some(ms(1500)) };
        assert_eq!(s.delay_after(&too_many, 3, 0.3), Some(ms(1500)));
        // A hint never makes a non-retryable error retryable.
        let gone = Error::ToolFailed { message: "gone".into(), status: Some(410), retry_after: Some(ms(10)) };
        assert_eq!(s.delay_after(&gone, 2, 0.3), None);
    }
}
