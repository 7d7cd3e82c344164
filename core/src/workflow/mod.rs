//! Workflows (design §7): definitions, `${{ }}` expressions, validation, the
//! executor with retries, timeouts, fallbacks and circuit breakers, sessions.

pub mod breaker;
pub mod expr;
pub mod retry;
