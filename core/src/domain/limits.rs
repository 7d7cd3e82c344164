//! Rate limits: GCRA (the generic cell rate algorithm) per (limit, key).
//!
//! Not `governor`: a call may fall under several limits at once, and a denied call
//! must consume nothing from any of them. governor's checks consume on success and
//! cannot be undone, so a call passing limit A and failing limit B would still spend
//! A. Here every applicable limit is tested under one lock and committed only if all
//! pass. GCRA itself is a few lines: a theoretical arrival time per key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Call;
use super::spec::{Per, RateLimitSpec};

/// A limit's keys are pruned once it holds this many (those whose budget is full again).
const PRUNE_AT: usize = 100_000;

pub struct RateLimits {
    limits: Vec<Limit>,
    /// Per limit (same index): key → theoretical arrival time. Looked up by the
    /// call's borrowed key; a key is allocated only when first committed.
    state: Mutex<Vec<HashMap<Box<str>, Instant>>>,
}

struct Limit {
    tool: Option<String>,
    action: Option<String>,
    per: Per,
    /// Time one call "costs": window / limit.
    cost: Duration,
    window: Duration,
    description: String,
}

/// A denied check: the limit that denied and when a call could pass again.
#[derive(Debug, Clone)]
pub struct Limited {
    pub limit: String,
    pub retry_after: Duration,
}

impl RateLimits {
    pub fn new(specs: &[RateLimitSpec]) -> Result<RateLimits, String> {
        let mut limits = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            if s.limit == 0 || s.window.is_zero() {
                return Err(format!("rate_limits[{i}]: limit and window must be greater than zero"));
            }
            let any = |v: &Option<String>| v.clone().filter(|t| t != "*");
            let (tool, action) = (any(&s.matches.tool), any(&s.matches.action));
            let description = format!(
                "{} per {:?} for {}{}",
                s.limit,
                s.window,
                tool.as_deref().unwrap_or("*"),
                action.as_deref().map(|a| format!(".{a}")).unwrap_or_default()
            );
            limits.push(Limit { tool, action, per: s.per, cost: s.window / s.limit, window: s.window, description });
        }
        let state = Mutex::new(limits.iter().map(|_| HashMap::new()).collect());
        Ok(RateLimits { limits, state })
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Take one call from every limit that applies, or from none when any denies.
    pub fn acquire(&self, call: &Call<'_>) -> Result<(), Limited> {
        self.run(call, true)
    }

    /// Whether a call would pass now (dry run: consumes nothing).
    pub fn check(&self, call: &Call<'_>) -> Result<(), Limited> {
        self.run(call, false)
    }

    fn run(&self, call: &Call<'_>, commit: bool) -> Result<(), Limited> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        let mut updates: Vec<(usize, &str, Instant)> = Vec::new();
        let mut denied: Option<Limited> = None;
        for (i, limit) in self.limits.iter().enumerate() {
            if limit.tool.as_deref().is_some_and(|t| t != call.manual)
                || limit.action.as_deref().is_some_and(|a| a != call.action)
            {
                continue;
            }
            let key = limit.key(call);
            let tat = state[i].get(key).copied().unwrap_or(now).max(now);
            let next = tat + limit.cost;
            // Allowed while the budget's debt stays within one window.
            if next <= now + limit.window {
                updates.push((i, key, next));
            } else {
                let retry_after = next - limit.window - now;
                if denied.as_ref().is_none_or(|d| retry_after > d.retry_after) {
                    denied = Some(Limited { limit: limit.description.clone(), retry_after });
                }
            }
        }
        if let Some(d) = denied {
            return Err(d);
        }
        if commit {
            for (i, key, next) in updates {
                let table = &mut state[i];
                match table.get_mut(key) {
                    Some(tat) => *tat = next,
                    None => {
                        if table.len() >= PRUNE_AT {
                            table.retain(|_, tat| *tat > now);
                        }
                        table.insert(key.into(), next);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Limit {
    fn key<'c>(&self, call: &Call<'c>) -> &'c str {
        match self.per {
            Per::Global => "",
            Per::Tool => call.tool,
            Per::Tenant => call.tenant.unwrap_or(""),
            Per::User => call.user.unwrap_or(""),
            Per::Session => call.session.unwrap_or(""),
        }
    }
}
