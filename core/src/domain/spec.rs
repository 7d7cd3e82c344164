//! The domain sections of the config (docs/design.md §6), as written in `utp.yaml`.
//! The original UTP shape (`permissions: {betfair: {enabled, allowed_actions}}`,
//! `business_rules: {max_bet_amount: 1000}`) is accepted as is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::parse_duration;

/// Everything the domain layer reads from the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DomainSpec {
    /// Per manual (tool): enabled, allowed actions, per-tenant overrides.
    pub permissions: BTreeMap<String, PermissionSpec>,
    /// Named constants, visible to rules as `constants`.
    pub business_rules: Map<String, Value>,
    pub rules: Vec<RuleSpec>,
    pub rate_limits: Vec<RateLimitSpec>,
    pub security: SecuritySpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Actions (tool names without the manual) that may run; absent = all.
    #[serde(default)]
    pub allowed_actions: Option<Vec<String>>,
    /// Overrides for one tenant; unset fields fall back to the manual's.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPermissionSpec>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPermissionSpec {
    pub enabled: Option<bool>,
    pub allowed_actions: Option<Vec<String>>,
}

/// Which calls a rule or a rate limit applies to; an absent field (or `"*"`) matches any.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub tool: Option<String>,
    pub action: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    /// CEL condition; true denies the call.
    pub deny_if: Option<String>,
    /// CEL condition; true escalates the call to a human approval.
    pub escalate_if: Option<String>,
    /// Calls outside this window are denied.
    pub allow_only_during: Option<WindowSpec>,
    /// Shown to the caller; `{{constants.x}}` / `{{params.x}}` are filled in.
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// `mon`..`sun`; absent = every day.
    pub days: Option<Vec<String>>,
    /// Local time `HH:MM` (inclusive).
    pub from: String,
    /// Local time `HH:MM` (exclusive); earlier than `from` means the window spans midnight.
    pub to: String,
    /// IANA time zone, e.g. `Europe/London`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// What a rate limit is counted per.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One budget for every matching call.
    #[default]
    Global,
    /// One budget per tool (`manual.tool`).
    Tool,
    Tenant,
    User,
    Session,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    #[serde(default)]
    pub per: Per,
    /// Calls allowed per window (also the burst).
    pub limit: u32,
    #[serde(deserialize_with = "de_duration")]
    pub window: Duration,
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = Value::deserialize(d)?;
    parse_duration(&v).map_err(serde::de::Error::custom)
}

/// Security levels: `restricted` and `dangerous` calls need a human approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Safe,
    Moderate,
    Restricted,
    Dangerous,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Safe => "safe",
            Level::Moderate => "moderate",
            Level::Restricted => "restricted",
            Level::Dangerous => "dangerous",
        }
    }

    pub fn needs_approval(self) -> bool {
        self >= Level::Restricted
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySpec {
    pub default: Level,
    /// By `manual.tool` or `manual`.
    pub levels: BTreeMap<String, Level>,
}

impl DomainSpec {
    /// Read the domain sections out of the config's catch-all map.
    pub fn from_config(other: &Map<String, Value>) -> Result<DomainSpec, String> {
        let mut section = Map::new();
        for key in ["permissions", "business_rules", "rules", "rate_limits", "security"] {
            if let Some(v) = other.get(key) {
                section.insert(key.into(), v.clone());
            }
        }
        serde_json::from_value(Value::Object(section)).map_err(|e| format!("domain config: {e}"))
    }
}
