//! Events on the engine (docs/design.md §8): the bus, subscriptions, history and metrics.

use std::sync::Arc;

use serde_json::Value;

use super::Engine;
use crate::admission::Refusal;
use crate::error::Result;
use crate::events::{Event, EventBus, EventHandler, HistoryFilter, SubscriptionId, kinds};

impl Engine {
    /// The engine's event bus: publish from other layers (`policy.denied`,
    /// `approval.*`, `ratelimit.limited`, workflow and step events).
    pub fn events(&self) -> &EventBus {
        &self.inner.events
    }

    /// Subscribe `handler` to events whose type matches the glob `pattern`.
    pub fn subscribe(&self, pattern: &str, handler: EventHandler) -> Result<SubscriptionId> {
        self.inner.events.subscribe(pattern, handler)
    }

    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.inner.events.unsubscribe(id)
    }

    /// Events kept in the in-memory history that pass `filter`, in id order.
    pub fn history(&self, filter: &HistoryFilter) -> Vec<Arc<Event>> {
        self.inner.events.history(filter)
    }

    /// A JSON snapshot of the metrics.
    pub fn metrics(&self) -> Value {
        self.inner.events.metrics()
    }

    /// The metrics in Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        self.inner.events.metrics_text()
    }

    pub(super) fn publish_manual(&self, kind: &'static str, manual: &str, tools: usize) {
        self.inner.events.publish(Event::new(kind).data(serde_json::json!({"manual": manual, "tools": tools})));
    }

    /// `manual.registered`, naming the tools a remote manual offered that were left
    /// out and why (`refused`, only when there are some).
    pub(super) fn publish_manual_registered(&self, manual: &str, tools: usize, refused: &[Refusal]) {
        let mut data = serde_json::json!({"manual": manual, "tools": tools});
        if !refused.is_empty() {
            data["refused"] = serde_json::json!(refused);
        }
        self.inner.events.publish(Event::new(kinds::MANUAL_REGISTERED).data(data));
    }
}
