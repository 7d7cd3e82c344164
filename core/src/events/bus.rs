//! The event bus: publish without blocking, glob subscriptions, one bounded
//! queue and one thread per subscriber.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::Value;

use super::glob::Pattern;
use super::history::{History, HistoryFilter};
use super::metrics::{Metrics, SubscriberCounts};
use super::{Event, EventsConfig, kinds};
use crate::error::{Error, Result};

/// A subscriber's handler. It runs on the subscription's own thread, one event at
/// a time in id order; an `Err` or a panic is counted and logged, never more.
pub type EventHandler = Arc<dyn Fn(Arc<Event>) -> std::result::Result<(), String> + Send + Sync>;

/// Identifies a subscription (an integer, so the C ABI can hand it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// A live subscription's state, for `subscriptions()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub id: SubscriptionId,
    pub pattern: String,
    pub capacity: usize,
    /// Events waiting in its queue now.
    pub queued: usize,
    /// Events its handler has been given.
    pub delivered: u64,
    /// Events dropped because its queue was full.
    pub dropped: u64,
    /// Handler calls that returned `Err` or panicked.
    pub errors: u64,
}

struct Queue {
    items: VecDeque<Arc<Event>>,
    sleep: Sleep,
    /// The handler is running on a batch taken out of `items`.
    busy: bool,
}

/// How the subscriber thread waits. Waking a parked thread is a syscall, too much
/// to pay per event and subscriber on the publisher's side, so a thread
/// that was just busy naps briefly and collects what arrived meanwhile (publishers
/// wake it early only when its queue is half full); after [`DEEP_AFTER`] empty
/// naps it sleeps until woken, so an idle engine costs nothing and the first
/// event of a burst is delivered at once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sleep {
    Awake,
    Nap,
    Deep,
}

/// Length of a nap: the longest extra delivery delay while events keep coming.
const NAP: Duration = Duration::from_micros(200);
/// Empty naps before sleeping until woken (about 1 ms without events).
const DEEP_AFTER: u32 = 5;

struct Sub {
    id: u64,
    pattern: Pattern,
    capacity: usize,
    handler: EventHandler,
    queue: Mutex<Queue>,
    thread: OnceLock<Thread>,
    closed: AtomicBool,
    delivered: AtomicU64,
    dropped: AtomicU64,
    errors: AtomicU64,
}

impl Sub {
    /// Enqueue or drop; wakes the thread only when it sleeps.
    #[inline]
    fn offer(&self, event: &Arc<Event>, metrics: &Metrics) {
        let wake = {
            let mut q = self.queue.lock();
            if q.items.len() >= self.capacity {
                drop(q);
                self.dropped.fetch_add(1, Relaxed);
                metrics.dropped.fetch_add(1, Relaxed);
                return;
            }
            q.items.push_back(event.clone());
            let wake = match q.sleep {
                Sleep::Awake => false,
                Sleep::Deep => true,
                Sleep::Nap => q.items.len() * 2 >= self.capacity,
            };
            if wake {
                q.sleep = Sleep::Awake;
            }
            wake
        };
        if wake {
            self.unpark();
        }
    }

    fn unpark(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    fn close(&self) {
        self.closed.store(true, Relaxed);
        self.queue.lock().sleep = Sleep::Awake;
        self.unpark();
    }

    fn info(&self) -> SubscriptionInfo {
        SubscriptionInfo {
            id: SubscriptionId(self.id),
            pattern: self.pattern.as_str().to_string(),
            capacity: self.capacity,
            queued: self.queue.lock().items.len(),
            delivered: self.delivered.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// The subscriber thread: drain the queue in batches, run the handler, park when idle.
fn serve(sub: Arc<Sub>, metrics: Arc<Metrics>) {
    let mut batch = VecDeque::new();
    let mut empty_naps = 0;
    loop {
        {
            let mut q = sub.queue.lock();
            q.busy = false;
            q.sleep = Sleep::Awake;
            if sub.closed.load(Relaxed) {
                q.items.clear();
                return;
            }
            if q.items.is_empty() {
                if empty_naps >= DEEP_AFTER {
                    q.sleep = Sleep::Deep;
                    drop(q);
                    std::thread::park();
                } else {
                    empty_naps += 1;
                    q.sleep = Sleep::Nap;
                    drop(q);
                    std::thread::park_timeout(NAP);
                }
                continue;
            }
            empty_naps = 0;
            std::mem::swap(&mut q.items, &mut batch);
            q.busy = true;
        }
        for event in batch.drain(..) {
            if sub.closed.load(Relaxed) {
                break;
            }
            sub.delivered.fetch_add(1, Relaxed);
            let failure = match std::panic::catch_unwind(AssertUnwindSafe(|| (sub.handler)(event.clone()))) {
                Ok(Ok(())) => continue,
                Ok(Err(message)) => message,
                Err(panic) => Error::from_panic(panic.as_ref(), "event subscriber").to_string(),
            };
            sub.errors.fetch_add(1, Relaxed);
            metrics.subscriber_errors.fetch_add(1, Relaxed);
            tracing::warn!(
                subscription = sub.id,
                pattern = sub.pattern.as_str(),
                event = event.id,
                event_type = &*event.kind,
                error = %failure,
                "event subscriber failed"
            );
        }
        batch.clear();
    }
}

struct Inner {
    config: EventsConfig,
    /// The history ring; its lock also orders publishes, so ids are increasing
    /// in the history and in every subscriber's queue.
    history: Mutex<(u64, History)>,
    subs: ArcSwap<Vec<Arc<Sub>>>,
    /// Serialises subscribe/unsubscribe (publishers never take it).
    writer: Mutex<u64>,
    metrics: Arc<Metrics>,
    /// Sees every event, in id order, as it is published (the store's audit log).
    sink: std::sync::OnceLock<EventSink>,
}

/// Called with every published event, in id order, under the publish lock: it must
/// not block (the store's sink only queues the event for its writer).
pub type EventSink = Box<dyn Fn(&Arc<Event>) + Send + Sync>;

impl Drop for Inner {
    fn drop(&mut self) {
        for s in self.subs.load().iter() {
            s.close();
        }
    }
}

/// The bus. Cheap to clone (an `Arc`); every method is sync and callable from any thread.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("config", &self.inner.config)
            .field("subscriptions", &self.inner.subs.load().len())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(EventsConfig::default())
    }
}

impl EventBus {
    pub fn new(config: EventsConfig) -> EventBus {
        EventBus {
            inner: Arc::new(Inner {
                config,
                history: Mutex::new((0, History::new(config.history_size))),
                subs: ArcSwap::from_pointee(Vec::new()),
                writer: Mutex::new(0),
                metrics: Arc::new(Metrics::default()),
                sink: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> EventsConfig {
        self.inner.config
    }

    /// Publish: assign the next id, keep it in the history, offer it to every
    /// matching subscriber (a full queue drops it for that subscriber). Never
    /// blocks on a subscriber and never fails. Returns the id.
    ///
    /// `policy.denied` and `ratelimit.limited` events also count in the metrics
    /// (per `tool`), so the domain layer only publishes.
    pub fn publish(&self, event: Event) -> u64 {
        self.publish_shared(event).id
    }

    /// As [`EventBus::publish`], returning the event as published (with its id).
    pub fn publish_shared(&self, mut event: Event) -> Arc<Event> {
        self.observe(&event);
        let inner = &*self.inner;
        let subs = inner.subs.load();
        let event = {
            let mut guard = inner.history.lock();
            let (next, history) = &mut *guard;
            *next += 1;
            event.id = *next;
            let event = Arc::new(event);
            history.push(&event);
            if let Some(sink) = inner.sink.get() {
                sink(&event);
            }
            for s in subs.iter() {
                if s.pattern.matches(&event.kind) {
                    s.offer(&event, &inner.metrics);
                }
            }
            event
        };
        inner.metrics.published.fetch_add(1, Relaxed);
        event
    }

    /// Install the sink that sees every event from now on (once per bus; false if one is set).
    pub fn set_sink(&self, sink: EventSink) -> bool {
        self.inner.sink.set(sink).is_ok()
    }

    /// The metrics derived from events: `policy.denied` and `ratelimit.limited`
    /// count per `tool`, so the domain layer only publishes.
    #[inline]
    fn observe(&self, event: &Event) {
        let metrics = &self.inner.metrics;
        match &*event.kind {
            kinds::POLICY_DENIED => metrics.record_denied(event.tool.as_deref().unwrap_or("")),
            kinds::RATELIMIT_LIMITED => metrics.record_rate_limited(event.tool.as_deref().unwrap_or("")),
            _ => {}
        }
    }

    /// Subscribe `handler` to events whose type matches `pattern` (see [`Pattern`]),
    /// with the configured queue capacity.
    pub fn subscribe(&self, pattern: &str, handler: EventHandler) -> Result<SubscriptionId> {
        self.subscribe_with_capacity(pattern, handler, self.inner.config.queue_capacity)
    }

    /// As [`EventBus::subscribe`], with this subscription's queue bound.
    pub fn subscribe_with_capacity(
        &self,
        pattern: &str,
        handler: EventHandler,
        capacity: usize,
    ) -> Result<SubscriptionId> {
        // A typo (`tool.sucess`) would otherwise subscribe to nothing, silently.
        let pattern = super::check_pattern(pattern, "event pattern")?;
        if capacity == 0 {
            return Err(Error::InvalidArgument("subscriber queue capacity must be at least 1".into()));
        }
        let mut writer = self.inner.writer.lock();
        *writer += 1;
        let id = *writer;
        let sub = Arc::new(Sub {
            id,
            pattern,
            capacity,
            handler,
            queue: Mutex::new(Queue { items: VecDeque::new(), sleep: Sleep::Awake, busy: false }),
            thread: OnceLock::new(),
            closed: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let (served, metrics) = (sub.clone(), self.inner.metrics.clone());
        let handle = std::thread::Builder::new()
            .name(format!("utp-events-{id}"))
            .spawn(move || serve(served, metrics))
            .map_err(|e| Error::Internal(format!("cannot start the event subscriber thread: {e}")))?;
        let _ = sub.thread.set(handle.thread().clone());
        let mut subs = Vec::clone(&self.inner.subs.load());
        subs.push(sub);
        self.inner.subs.store(Arc::new(subs));
        Ok(SubscriptionId(id))
    }

    /// Remove a subscription; events still queued for it are discarded. False when
    /// the id is unknown (or already removed).
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let _writer = self.inner.writer.lock();
        let current = self.inner.subs.load();
        let Some(pos) = current.iter().position(|s| s.id == id.0) else {
            return false;
        };
        let mut subs = Vec::clone(&current);
        let sub = subs.remove(pos);
        self.inner.subs.store(Arc::new(subs));
        sub.close();
        true
    }

    /// The live subscriptions, by id.
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.inner.subs.load().iter().map(|s| s.info()).collect()
    }

    /// Wait until every subscriber has handled (or dropped) everything queued so
    /// far, at most `timeout`. True when they are all idle.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let idle = self.inner.subs.load().iter().all(|s| {
                let q = s.queue.lock();
                q.items.is_empty() && !q.busy
            });
            if idle {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Events kept in the history that pass `filter`, in id order.
    pub fn history(&self, filter: &HistoryFilter) -> Vec<Arc<Event>> {
        self.inner.history.lock().1.query(filter)
    }

    /// The id of the last event published (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.inner.history.lock().0
    }

    /// Events currently kept in the history.
    pub fn history_len(&self) -> usize {
        self.inner.history.lock().1.len()
    }

    /// The metrics: call counters and histograms are recorded here by the engine.
    pub fn metrics_handle(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A JSON snapshot of the metrics.
    pub fn metrics(&self) -> Value {
        self.inner.metrics.snapshot(&self.counts())
    }

    /// The metrics in Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.text(&self.counts())
    }

    fn counts(&self) -> Vec<SubscriberCounts> {
        self.subscriptions()
            .into_iter()
            .map(|i| SubscriberCounts {
                id: i.id.0,
                pattern: i.pattern,
                delivered: i.delivered,
                dropped: i.dropped,
                errors: i.errors,
                queued: i.queued,
            })
            .collect()
    }
}
