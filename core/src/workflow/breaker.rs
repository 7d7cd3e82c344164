//! A circuit breaker per tool (docs/design.md §7): the failure ratio over a rolling
//! window, with a minimum number of calls, opens it; after `open_for` a few
//! probes are let through and decide whether it closes again. Denials, 4xx and
//! our own rate limits are not the tool's fault and do not count.
//!
//! Time is always passed in (`now`), so the logic is deterministic under test;
//! the executor passes `Instant::now()`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::retry::is_retryable;
use crate::config::parse_duration;
use crate::error::{Error, ErrorCode};

/// Buckets of the rolling window: outcomes expire a bucket (window/10) at a time.
const BUCKETS: usize = 10;

/// While half-open with every probe slot taken, callers are told to come back
/// after at most this long: a probe usually finishes well before `open_for`.
const HALF_OPEN_RECHECK: Duration = Duration::from_secs(1);

/// `breakers.default` or `breakers.tools.<tool or manual>` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSpec {
    pub enabled: bool,
    /// Failures / (failures + successes) in the window at which it opens, in (0, 1].
    pub failure_ratio: f64,
    /// Outcomes older than this do not count.
    #[serde(deserialize_with = "de_duration")]
    pub window: Duration,
    /// No opening before this many counted outcomes in the window.
    pub min_calls: u32,
    /// How long it stays open before letting probes through.
    #[serde(deserialize_with = "de_duration")]
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close, one failure reopens.
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> BreakerSpec {
        BreakerSpec {
            enabled: true,
            failure_ratio: 0.5,
            window: Duration::from_secs(30),
            min_calls: 10,
            open_for: Duration::from_secs(15),
            half_open_probes: 1,
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    parse_duration(&v).map_err(serde::de::Error::custom)
}

impl BreakerSpec {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(format!("failure_ratio must be in (0, 1], found {}", self.failure_ratio));
        }
        if self.window.is_zero() {
            return Err("window must be longer than 0".into());
        }
        if self.min_calls < 1 {
            return Err("min_calls must be at least 1, found 0".into());
        }
        if self.half_open_probes < 1 {
            return Err("half_open_probes must be at least 1, found 0".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> BreakerState {
        match v {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`Breaker::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Half-open: this call decides; its outcome must be recorded.
    Probe,
    Rejected {
        retry_in: Duration,
    },
}

/// A state change, for events and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

/// What a call's result counts as (see [`outcome_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Not the tool's health (denial, 4xx, validation, cancellation, our limiter):
    /// not counted, but it still ends a probe.
    Ignored,
}

/// Which outcome a call's result counts as: errors that would be retried are
/// failures of the tool, except `RATE_LIMITED` (our own limiter said no, the
/// tool was never called); the others are the caller's fault and are ignored.
pub fn outcome_of(result: &Result<Value, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.code() == ErrorCode::RateLimited => Outcome::Ignored,
        Err(e) if is_retryable(e) => Outcome::Failure,
        Err(_) => Outcome::Ignored,
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which time slot (window/BUCKETS wide, counted from `origin`) the counts belong to.
    slot: u64,
    successes: u32,
    failures: u32,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Start of slot 0, set by the first outcome.
    origin: Option<Instant>,
    buckets: [Bucket; BUCKETS],
    open_until: Instant,
    probes_in_flight: u32,
    probes_succeeded: u32,
    /// A probe whose outcome is never recorded (its caller went away) would keep
    /// the breaker half-open forever; after this instant its slot is given back.
    probes_expire: Instant,
}

/// The breaker of one tool. Thread-safe; `admit` takes no lock while closed.
#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    slot_nanos: u128,
    probe_lease: Duration,
    /// Mirror of `inner.state` for the lock-free closed path.
    state: AtomicU8,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Breaker {
        let slot_nanos = (spec.window.as_nanos() / BUCKETS as u128).max(1);
        let probe_lease = spec.open_for.max(spec.window);
        let now = Instant::now();
        Breaker {
            spec,
            slot_nanos,
            probe_lease,
            state: AtomicU8::new(BreakerState::Closed as u8),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                origin: None,
                buckets: [Bucket::default(); BUCKETS],
                open_until: now,
                probes_in_flight: 0,
                probes_succeeded: 0,
                probes_expire: now,
            }),
        }
    }

    pub fn spec(&self) -> &BreakerSpec {
        &self.spec
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// May a call go now? Open and `open_for` elapsed → half-open, and the call
    /// is a probe (up to `half_open_probes` at a time).
    pub fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        if !self.spec.enabled || self.state() == BreakerState::Closed {
            return (Admission::Allowed, None);
        }
        let mut inner = self.inner.lock();
        match inner.state {
            BreakerState::Closed => (Admission::Allowed, None),
            BreakerState::Open if now < inner.open_until => {
                (Admission::Rejected { retry_in: inner.open_until - now }, None)
            }
            BreakerState::Open => {
                self.set_state(&mut inner, BreakerState::HalfOpen);
                inner.probes_in_flight = 1;
                inner.probes_succeeded = 0;
                inner.probes_expire = now + self.probe_lease;
                (Admission::Probe, Some(Transition::HalfOpened))
            }
            BreakerState::HalfOpen => {
                if now >= inner.probes_expire {
                    inner.probes_in_flight = 0;
                }
                if inner.probes_in_flight + inner.probes_succeeded < self.spec.half_open_probes {
                    inner.probes_in_flight += 1;
                    inner.probes_expire = now + self.probe_lease;
                    (Admission::Probe, None)
                } else {
                    let retry_in = inner.probes_expire.saturating_duration_since(now).min(HALF_OPEN_RECHECK);
                    (Admission::Rejected { retry_in }, None)
                }
            }
        }
    }

    /// Record the outcome of an admitted call.
    ///
    /// While open, outcomes are late results of calls admitted before it opened
    /// and are dropped; while half-open with no probe in flight likewise.
    pub fn record(&self, now: Instant, outcome: Outcome) -> Option<Transition> {
        if !self.spec.enabled {
            return None;
        }
        if outcome == Outcome::Ignored && self.state() == BreakerState::Closed {
            return None;
        }
        let mut inner = self.inner.lock();
        match inner.state {
            BreakerState::Closed => {
                let slot = self.slot_of(&mut inner, now);
                let bucket = &mut inner.buckets[(slot % BUCKETS as u64) as usize];
                if slot > bucket.slot {
                    *bucket = Bucket { slot, ..Bucket::default() };
                } else if slot < bucket.slot {
                    // Older than the window as seen by a newer outcome already there.
                    return None;
                }
                match outcome {
                    Outcome::Success => bucket.successes = bucket.successes.saturating_add(1),
                    Outcome::Failure => bucket.failures = bucket.failures.saturating_add(1),
                    Outcome::Ignored => return None,
                }
                if outcome == Outcome::Failure {
                    let (successes, failures) = Self::counts(&inner, slot);
                    let total = successes + failures;
                    if total >= u64::from(self.spec.min_calls)
                        && failures as f64 >= self.spec.failure_ratio * total as f64
                    {
                        self.trip(&mut inner, now);
                        return Some(Transition::Opened);
                    }
                }
                None
            }
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if inner.probes_in_flight == 0 {
                    return None;
                }
                inner.probes_in_flight -= 1;
                match outcome {
                    Outcome::Ignored => None,
                    Outcome::Failure => {
                        self.trip(&mut inner, now);
                        Some(Transition::Opened)
                    }
                    Outcome::Success => {
                        inner.probes_succeeded += 1;
                        if inner.probes_succeeded < self.spec.half_open_probes {
                            return None;
                        }
                        // A fresh window: what happened before opening is history.
                        inner.buckets = [Bucket::default(); BUCKETS];
                        inner.origin = None;
                        inner.probes_in_flight = 0;
                        inner.probes_succeeded = 0;
                        self.set_state(&mut inner, BreakerState::Closed);
                        Some(Transition::Closed)
                    }
                }
            }
        }
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState) {
        inner.state = state;
        self.state.store(state as u8, Ordering::Release);
    }

    fn trip(&self, inner: &mut Inner, now: Instant) {
        inner.open_until = now + self.spec.open_for;
        inner.probes_in_flight = 0;
        inner.probes_succeeded = 0;
        self.set_state(inner, BreakerState::Open);
    }

    fn slot_of(&self, inner: &mut Inner, now: Instant) -> u64 {
        let origin = *inner.origin.get_or_insert(now);
        // Times before the origin (a thread that read the clock a little earlier)
        // land in slot 0.
        let slot = now.saturating_duration_since(origin).as_nanos() / self.slot_nanos;
        u64::try_from(slot).unwrap_or(u64::MAX)
    }

    /// (successes, failures) in the window ending at `slot`.
    fn counts(inner: &Inner, slot: u64) -> (u64, u64) {
        inner
            .buckets
            .iter()
            .filter(|b| b.slot.saturating_add(BUCKETS as u64) > slot)
            .fold((0, 0), |(s, f), b| (s + u64::from(b.successes), f + u64::from(b.failures)))
    }
}

/// The breakers of every tool, each created on first use.
#[derive(Debug)]
pub struct Breakers {
    default: BreakerSpec,
    per_tool: HashMap<String, BreakerSpec>,
    map: RwLock<HashMap<String, Arc<Breaker>>>,
}

impl Default for Breakers {
    fn default() -> Breakers {
        Breakers::new(BreakerSpec::default(), HashMap::new())
    }
}

impl Breakers {
    /// `per_tool` keys are full tool names (`manual.tool`) or manual names; the
    /// tool name wins over its manual's.
    pub fn new(default: BreakerSpec, per_tool: HashMap<String, BreakerSpec>) -> Breakers {
        Breakers { default, per_tool, map: RwLock::new(HashMap::new()) }
    }

    pub fn get(&self, tool: &str) -> Arc<Breaker> {
        if let Some(b) = self.map.read().get(tool) {
            return b.clone();
        }
        let mut map = self.map.write();
        map.entry(tool.to_owned()).or_insert_with(|| Arc::new(Breaker::new(self.spec_for(tool).clone()))).clone()
    }

    fn spec_for(&self, tool: &str) -> &BreakerSpec {
        self.per_tool
            .get(tool)
            .or_else(|| tool.split_once('.').and_then(|(manual, _)| self.per_tool.get(manual)))
            .unwrap_or(&self.default)
    }

    /// Parse `breakers: {default: {...}, tools: {"shop.getInventory": {...}, shop: {...}}}`
    /// (absent or null → defaults). A tool's entry overrides only the fields it
    /// names; the rest come from `default`.
    pub fn from_config(section: Option<&Value>) -> Result<Breakers, String> {
        let section = match section {
            None | Some(Value::Null) => return Ok(Breakers::default()),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(format!("breakers: expected a mapping with `default` and `tools`, found {other}"));
            }
        };
        if let Some(key) = section.keys().find(|k| *k != "default" && *k != "tools") {
            return Err(format!("breakers.{key}: unknown key (expected `default` or `tools`)"));
        }
        let default_fields = match section.get("default") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => return Err(format!("breakers.default: expected a mapping, found {other}")),
        };
        let default = parse_spec(&default_fields, "breakers.default")?;
        let mut per_tool = HashMap::new();
        match section.get("tools") {
            None | Some(Value::Null) => {}
            Some(Value::Object(tools)) => {
                for (name, value) in tools {
                    let at = format!("breakers.tools.{name}");
                    let Value::Object(fields) = value else {
                        return Err(format!("{at}: expected a mapping, found {value}"));
                    };
                    if name.is_empty() {
                        return Err("breakers.tools: empty tool name".into());
                    }
                    let mut merged = default_fields.clone();
                    merged.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                    per_tool.insert(name.clone(), parse_spec(&merged, &at)?);
                }
            }
            Some(other) => {
                return Err(format!("breakers.tools: expected a mapping of tool or manual names, found {other}"));
            }
        }
        Ok(Breakers::new(default, per_tool))
    }
}

fn parse_spec(fields: &Map<String, Value>, at: &str) -> Result<BreakerSpec, String> {
    let spec = BreakerSpec::deserialize(Value::Object(fields.clone())).map_err(|e| format!("{at}: {e}"))?;
    spec.validate().map_err(|e| format!("{at}.{e}"))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_error(status: u16) -> Error {
        Error::ToolFailed { message: format!("HTTP {status}"), status: Some(status), retry_after: None }
    }
    use serde_json::json;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn spec() -> BreakerSpec {
        BreakerSpec { min_calls: 4, ..BreakerSpec::default() }
    }

    fn record_n(b: &Breaker, now: Instant, outcome: Outcome, n: usize) -> Vec<Transition> {
        (0..n).filter_map(|_| b.record(now, outcome)).collect()
    }

    #[test]
    fn defaults_and_state_names() {
        let s = BreakerSpec::default();
        assert!(s.enabled);
        assert_eq!((s.failure_ratio, s.min_calls, s.half_open_probes), (0.5, 10, 1));
        assert_eq!((s.window, s.open_for), (secs(30), secs(15)));
        assert_eq!(s.validate(), Ok(()));
        let names: Vec<_> =
            [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen].iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["closed", "open", "half_open"]);
        assert_eq!(Breaker::new(s).state(), BreakerState::Closed);
    }

    #[test]
    fn stays_closed_below_min_calls() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        assert!(record_n(&b, t, Outcome::Failure, 3).is_empty());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t), (Admission::Allowed, None));
    }

    #[test]
    fn opens_at_the_ratio_with_enough_calls() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        record_n(&b, t, Outcome::Success, 3);
        assert!(record_n(&b, t, Outcome::Failure, 2).is_empty(), "2/5 < 0.5");
        assert_eq!(b.record(t, Outcome::Failure), Some(Transition::Opened), "3/6 >= 0.5");
        assert_eq!(b.state(), BreakerState::Open);
        // Successes alone never open it.
        let b = Breaker::new(spec());
        assert!(record_n(&b, t, Outcome::Success, 100).is_empty());
    }

    #[test]
    fn rejects_while_open_and_counts_down() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 4);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t), (Admission::Rejected { retry_in: secs(15) }, None));
        assert_eq!(b.admit(t + secs(10)), (Admission::Rejected { retry_in: secs(5) }, None));
        // Late results of calls admitted before it opened change nothing.
        assert_eq!(b.record(t + secs(1), Outcome::Success), None);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_admits_probes_then_closes_on_success() {
        let b = Breaker::new(BreakerSpec { half_open_probes: 2, ..spec() });
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 4);
        let t = t + secs(15);
        assert_eq!(b.admit(t), (Admission::Probe, Some(Transition::HalfOpened)));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(t), (Admission::Probe, None));
        assert!(matches!(b.admit(t), (Admission::Rejected { retry_in }, None) if retry_in > Duration::ZERO));
        assert_eq!(b.record(t, Outcome::Success), None, "one of two probes");
        assert!(matches!(b.admit(t).0, Admission::Rejected { .. }), "a succeeded probe does not free a slot");
        assert_eq!(b.record(t, Outcome::Success), Some(Transition::Closed));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t), (Admission::Allowed, None));
        // The old failures are gone: it takes min_calls again to reopen.
        assert!(record_n(&b, t, Outcome::Failure, 3).is_empty());
        assert_eq!(b.record(t, Outcome::Failure), Some(Transition::Opened));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 4);
        let t = t + secs(20);
        assert_eq!(b.admit(t).0, Admission::Probe);
        assert!(matches!(b.admit(t).0, Admission::Rejected { .. }), "only one probe");
        assert_eq!(b.record(t, Outcome::Failure), Some(Transition::Opened));
        assert_eq!(b.admit(t + secs(1)), (Admission::Rejected { retry_in: secs(14) }, None));
        assert_eq!(b.admit(t + secs(15)), (Admission::Probe, Some(Transition::HalfOpened)));
    }

    #[test]
    fn ignored_outcomes_do_not_count_but_release_probes() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 3);
        assert!(record_n(&b, t, Outcome::Ignored, 50).is_empty());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.record(t, Outcome::Failure), Some(Transition::Opened));
        let t = t + secs(15);
        assert_eq!(b.admit(t).0, Admission::Probe);
        assert!(matches!(b.admit(t).0, Admission::Rejected { .. }));
        assert_eq!(b.record(t, Outcome::Ignored), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(t), (Admission::Probe, None), "the slot was released");
        assert_eq!(b.record(t, Outcome::Success), Some(Transition::Closed));
    }

    #[test]
    fn lost_probes_are_given_back_after_a_lease() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 4);
        let t = t + secs(15);
        assert_eq!(b.admit(t).0, Admission::Probe); // never recorded
        assert!(matches!(b.admit(t + secs(29)).0, Admission::Rejected { retry_in } if retry_in <= secs(1)));
        assert_eq!(b.admit(t + secs(30)), (Admission::Probe, None));
    }

    #[test]
    fn old_outcomes_fall_out_of_the_window() {
        let b = Breaker::new(spec()); // window 30s, 3s buckets
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 3);
        // 30s later those three no longer count: three more failures are again below min_calls.
        let later = t + secs(31);
        assert!(record_n(&b, later, Outcome::Failure, 3).is_empty());
        assert_eq!(b.state(), BreakerState::Closed);
        // Within the window they do add up.
        assert_eq!(b.record(later + secs(20), Outcome::Failure), Some(Transition::Opened));

        // Old successes expire too, so recent failures dominate.
        let b = Breaker::new(spec());
        record_n(&b, t, Outcome::Success, 20);
        assert!(record_n(&b, t + secs(10), Outcome::Failure, 4).is_empty(), "4/24");
        assert_eq!(b.record(t + secs(31), Outcome::Failure), Some(Transition::Opened), "5/5");
    }

    #[test]
    fn an_outcome_older_than_a_newer_one_in_its_bucket_is_dropped() {
        let b = Breaker::new(spec());
        let t = Instant::now();
        b.record(t, Outcome::Success);
        record_n(&b, t + secs(30), Outcome::Failure, 3); // same bucket index, next lap
        assert_eq!(b.record(t + secs(1), Outcome::Failure), None, "stale, not counted");
        assert_eq!(Breaker::counts(&b.inner.lock(), 10), (0, 3));
        // Earlier than the first outcome still counts (slot 0).
        let b = Breaker::new(spec());
        b.record(t + secs(5), Outcome::Success);
        assert_eq!(b.record(t, Outcome::Success), None);
        assert_eq!(Breaker::counts(&b.inner.lock(), 0), (2, 0));
    }

    #[test]
    fn disabled_always_admits() {
        let b = Breaker::new(BreakerSpec { enabled: false, min_calls: 1, ..BreakerSpec::default() });
        let t = Instant::now();
        assert!(record_n(&b, t, Outcome::Failure, 100).is_empty());
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t), (Admission::Allowed, None));
    }

    #[test]
    fn outcome_classification() {
        use crate::error::ErrorCode as C;
        assert_eq!(outcome_of(&Ok(json!({"ok": true}))), Outcome::Success);
        let cases = [
            (Error::Timeout("t".into()), Outcome::Failure),
            (Error::Transport("t".into()), Outcome::Failure),
            (Error::tool_failed("boom"), Outcome::Failure),
            (http_error(503), Outcome::Failure),
            (http_error(404), Outcome::Ignored),
            (Error::RateLimited { message: "x".into(), retry_after: secs(1) }, Outcome::Ignored),
            (Error::PermissionDenied("no".into()), Outcome::Ignored),
            (Error::ValidationFailed("bad".into()), Outcome::Ignored),
            (Error::Cancelled("stop".into()), Outcome::Ignored),
            (Error::with_code(C::Panic, "p"), Outcome::Failure),
            (Error::with_code(C::Internal, "i"), Outcome::Failure),
        ];
        for (e, expected) in cases {
            let code = e.code();
            assert_eq!(outcome_of(&Err(e)), expected, "{code}");
        }
    }

    #[test]
    fn concurrent_use_keeps_counts_consistent() {
        let b = Arc::new(Breaker::new(BreakerSpec { min_calls: u32::MAX, window: secs(3600), ..spec() }));
        let t = Instant::now();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for n in 0..1000u64 {
                        let now = t + Duration::from_millis(n);
                        assert_eq!(b.admit(now).0, Admission::Allowed);
                        let outcome = if (n + i) % 3 == 0 { Outcome::Failure } else { Outcome::Success };
                        assert_eq!(b.record(now, outcome), None);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // A one-hour window has 6-minute slots: every outcome is in slot 0.
        let (s, f) = Breaker::counts(&b.inner.lock(), 0);
        assert_eq!(s + f, 8000);
        let expected_failures: u64 = (0..8u64).map(|i| (0..1000u64).filter(|n| (n + i) % 3 == 0).count() as u64).sum();
        assert_eq!(f, expected_failures);
    }

    #[test]
    fn concurrent_half_open_admits_exactly_the_probes() {
        let b = Arc::new(Breaker::new(BreakerSpec { half_open_probes: 3, ..spec() }));
        let t = Instant::now();
        record_n(&b, t, Outcome::Failure, 4);
        let t = t + secs(15);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| matches!(b.admit(t), (Admission::Probe, _))).count())
            })
            .collect();
        let probes: usize = threads.into_iter().map(|th| th.join().unwrap()).sum();
        assert_eq!(probes, 3);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn concurrent_mixed_traffic_does_not_panic_and_keeps_invariants() {
        let b = Arc::new(Breaker::new(BreakerSpec {
            min_calls: 5,
            window: Duration::from_millis(100),
            open_for: Duration::from_millis(5),
            half_open_probes: 2,
            ..BreakerSpec::default()
        }));
        let t = Instant::now();
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut transitions = 0;
                    for n in 0..2000u64 {
                        let now = t + Duration::from_micros(n * 50 + i);
                        let (admission, tr) = b.admit(now);
                        transitions += tr.is_some() as u32;
                        if matches!(admission, Admission::Rejected { .. }) {
                            continue;
                        }
                        let outcome = match (n * 7 + i) % 5 {
                            0 | 1 => Outcome::Failure,
                            2 => Outcome::Ignored,
                            _ => Outcome::Success,
                        };
                        transitions += b.record(now, outcome).is_some() as u32;
                        let inner = b.inner.lock();
                        assert!(inner.probes_in_flight + inner.probes_succeeded <= 2);
                        assert_eq!(inner.state, b.state());
                    }
                    transitions
                })
            })
            .collect();
        let transitions: u32 = threads.into_iter().map(|th| th.join().unwrap()).sum();
        assert!(transitions > 0, "the breaker never moved");
    }

    #[test]
    fn validation_names_the_field() {
        for (spec, field) in [
            (BreakerSpec { failure_ratio: 0.0, ..Default::default() }, "failure_ratio"),
            (BreakerSpec { failure_ratio: 1.5, ..Default::default() }, "failure_ratio"),
            (BreakerSpec { failure_ratio: f64::NAN, ..Default::default() }, "failure_ratio"),
            (BreakerSpec { window: Duration::ZERO, ..Default::default() }, "window"),
            (BreakerSpec { min_calls: 0, ..Default::default() }, "min_calls"),
            (BreakerSpec { half_open_probes: 0, ..Default::default() }, "half_open_probes"),
        ] {
            assert!(spec.validate().unwrap_err().starts_with(field));
        }
        assert_eq!(BreakerSpec { failure_ratio: 1.0, ..Default::default() }.validate(), Ok(()));
    }

    #[test]
    fn config_absent_gives_defaults() {
        for section in [None, Some(&Value::Null)] {
            let b = Breakers::from_config(section).unwrap();
            assert_eq!(b.get("shop.getInventory").spec(), &BreakerSpec::default());
        }
        let b = Breakers::from_config(Some(&json!({}))).unwrap();
        assert_eq!(b.get("x.y").spec(), &BreakerSpec::default());
    }

    #[test]
    fn config_resolves_tool_then_manual_then_default() {
        let yaml = r#"
default: {min_calls: 20, open_for: 1m}
tools:
  shop.getInventory: {failure_ratio: 0.9}
  shop: {enabled: false}
"#;
        let section: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let b = Breakers::from_config(Some(&section)).unwrap();
        let inv = b.get("shop.getInventory");
        assert_eq!((inv.spec().failure_ratio, inv.spec().min_calls, inv.spec().open_for), (0.9, 20, secs(60)));
        assert!(inv.spec().enabled);
        let other = b.get("shop.setInventory");
        assert!(!other.spec().enabled);
        assert_eq!(other.spec().min_calls, 20, "inherits default fields");
        let sheets = b.get("sheets.appendRow");
        assert_eq!((sheets.spec().min_calls, sheets.spec().window), (20, secs(30)));
        // One breaker per tool, shared.
        assert!(Arc::ptr_eq(&b.get("shop.getInventory"), &inv));
        assert!(!Arc::ptr_eq(&b.get("shop.other"), &other));
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases = [
            (json!([1]), "breakers:"),
            (json!({"defaults": {}}), "breakers.defaults"),
            (json!({"default": 3}), "breakers.default"),
            (json!({"default": {"failure_ratio": 2}}), "breakers.default.failure_ratio"),
            (json!({"default": {"windw": "30s"}}), "windw"),
            (json!({"default": {"window": "soon"}}), "soon"),
            (json!({"tools": []}), "breakers.tools"),
            (json!({"tools": {"shop": true}}), "breakers.tools.shop"),
            (json!({"tools": {"shop": {"min_calls": 0}}}), "breakers.tools.shop.min_calls"),
            (json!({"tools": {"shop.get": {"open_for": -1}}}), "breakers.tools.shop.get"),
            (json!({"tools": {"": {}}}), "empty tool name"),
        ];
        for (section, needle) in cases {
            let err = Breakers::from_config(Some(&section)).unwrap_err();
            assert!(err.contains(needle), "{section}: {err}");
        }
    }
}
