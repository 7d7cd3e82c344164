//! Python keyword arguments as the JSON map `utp_core::host` checks, so that options
//! get the same limits and messages as in C and Node (docs/architecture.md, "Host
//! options"). Only the conversion lives here: an argument left at `None` is absent.

use serde_json::{Map, Value};
use utp_core::Error;
use utp_core::host;

/// The options of one call, built from its keyword arguments.
#[derive(Default)]
pub(crate) struct OptionMap(Map<String, Value>);

impl OptionMap {
    pub(crate) fn string(mut self, key: &str, value: Option<String>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.into(), Value::String(value));
        }
        self
    }

    pub(crate) fn count(mut self, key: &str, value: Option<u64>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.into(), Value::from(value));
        }
        self
    }

    /// A flag that is false by default: only `true` goes in (an empty map allocates
    /// nothing, and most calls pass no options at all).
    pub(crate) fn flag(mut self, key: &str, value: bool) -> Self {
        if value {
            self.0.insert(key.into(), Value::Bool(true));
        }
        self
    }

    pub(crate) fn value(mut self, key: &str, value: Option<Value>) -> Self {
        if let Some(value) = value {
            self.0.insert(key.into(), value);
        }
        self
    }

    /// Seconds: NaN and ±Infinity have no JSON form, so they are refused here, with
    /// the message the host layer gives any other bad timeout.
    pub(crate) fn seconds(mut self, key: &str, value: Option<f64>) -> Result<Self, Error> {
        if let Some(seconds) = value {
            let number = host::number_value(seconds)
                .ok_or_else(|| host::seconds(key, seconds).err().unwrap_or_else(|| Error::Internal(key.into())))?;
            self.0.insert(key.into(), number);
        }
        Ok(self)
    }

    pub(crate) fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// A tenant and a session id given as arguments, checked as the `tenant` and
/// `session` options are (`utp_core::host::check_id`).
pub(crate) fn check_ids(tenant: Option<&str>, session: Option<&str>) -> Result<(), Error> {
    for (option, id) in [("tenant", tenant), ("session", session)] {
        if let Some(id) = id {
            host::check_id(option, id)?;
        }
    }
    Ok(())
}
