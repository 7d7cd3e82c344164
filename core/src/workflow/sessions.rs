//! Session state (docs/design.md §7): a JSON object per (tenant, session), shared by the
//! executions of that session, readable as `state` in expressions and written by
//! steps' `set_state` or the engine API.

use std::collections::HashMap;

use parking_lot::RwLock;
use serde_json::{Map, Value};

type Key = (String, String);

#[derive(Default)]
pub struct Sessions {
    states: RwLock<HashMap<Key, Map<String, Value>>>,
}

fn key(tenant: Option<&str>, session: Option<&str>) -> Option<Key> {
    session.map(|s| (tenant.unwrap_or("").to_string(), s.to_string()))
}

impl Sessions {
    /// The state of a session (`{}` when it has none, or when there is no session).
    pub fn get(&self, tenant: Option<&str>, session: Option<&str>) -> Value {
        let Some(k) = key(tenant, session) else { return Value::Object(Map::new()) };
        Value::Object(self.states.read().get(&k).cloned().unwrap_or_default())
    }

    /// Set one key (`null` removes it). False without a session: there is nowhere to keep it.
    pub fn set(&self, tenant: Option<&str>, session: Option<&str>, name: &str, value: Value) -> bool {
        let Some(k) = key(tenant, session) else { return false };
        let mut states = self.states.write();
        let state = states.entry(k).or_default();
        if value.is_null() {
            state.remove(name);
        } else {
            state.insert(name.to_string(), value);
        }
        true
    }

    /// Replace a session's whole state.
    pub fn replace(&self, tenant: Option<&str>, session: Option<&str>, state: Map<String, Value>) -> bool {
        let Some(k) = key(tenant, session) else { return false };
        self.states.write().insert(k, state);
        true
    }
}
