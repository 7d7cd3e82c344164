//! The bounded in-memory history: a ring of the last `history_size` events.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Deserialize;

use super::Event;
use super::glob::Pattern;

/// Which events `history()` returns. Every field is optional; all given ones must match.
///
/// Results are in id order. With `since`, they are the first `limit` events after
/// that id (so polling with the last id seen never skips one that is still kept);
/// without, the last `limit`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryFilter {
    /// At most this many events (0 or absent: all kept).
    pub limit: Option<usize>,
    /// Event type glob (`tool.*`, `policy.denied`, `*`).
    #[serde(rename = "type", alias = "kind")]
    pub kind: Option<String>,
    pub execution_id: Option<String>,
    pub tool: Option<String>,
    pub tenant: Option<String>,
    /// Only events with an id greater than this.
    pub since: Option<u64>,
}

impl HistoryFilter {
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }
    pub fn kind(mut self, pattern: impl Into<String>) -> Self {
        self.kind = Some(pattern.into());
        self
    }
    pub fn execution(mut self, id: impl Into<String>) -> Self {
        self.execution_id = Some(id.into());
        self
    }
    pub fn tool(mut self, tool: impl Into<String>) -> Self {
        self.tool = Some(tool.into());
        self
    }
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
    pub fn since(mut self, id: u64) -> Self {
        self.since = Some(id);
        self
    }
}

pub(crate) struct History {
    capacity: usize,
    events: VecDeque<Arc<Event>>,
}

impl History {
    pub(crate) fn new(capacity: usize) -> History {
        History { capacity, events: VecDeque::with_capacity(capacity.min(4096)) }
    }

    #[inline]
    pub(crate) fn push(&mut self, event: &Arc<Event>) {
        if self.capacity == 0 {
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event.clone());
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn query(&self, filter: &HistoryFilter) -> Vec<Arc<Event>> {
        let pattern = filter.kind.as_deref().map(Pattern::new);
        let eq = |want: &Option<String>, have: &Option<String>| match want {
            None => true,
            Some(w) => have.as_deref() == Some(w.as_str()),
        };
        let keep = |e: &&Arc<Event>| {
            pattern.as_ref().is_none_or(|p| p.matches(&e.kind))
                && eq(&filter.execution_id, &e.execution_id)
                && eq(&filter.tool, &e.tool)
                && eq(&filter.tenant, &e.tenant)
        };
        let limit = filter.limit.filter(|&n| n > 0).unwrap_or(usize::MAX);
        match filter.since {
            Some(since) => {
                // Ids are increasing: skip the older part by binary search.
                let start = self.events.partition_point(|e| e.id <= since);
                self.events.range(start..).filter(keep).take(limit).cloned().collect()
            }
            None => {
                let mut out: Vec<_> = self.events.iter().rev().filter(keep).take(limit).cloned().collect();
                out.reverse();
                out
            }
        }
    }
}
