//! The domain layer: what may run, decided before every call (docs/design.md §6).
//!
//! Order of a check: the manual's permissions (enabled, allowed actions, per tenant) →
//! the tool's security level (restricted / dangerous escalate to a human) → the
//! declarative rules indexed by (tool, action) → the host rule callbacks. Every
//! applicable check runs; deny beats escalate beats allow, so order never matters;
//! a check that fails to evaluate denies (fail closed). Rate limits are taken after
//! the decision allows the call (see `limits`), and approvals are kept in `approvals`.

mod approvals;
mod limits;
mod rules;
pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use serde_json::{Map, Value, json};

pub use approvals::{ApprovalInfo, ApprovalStatus, Approvals};
pub use limits::{Limited, RateLimits};
use rules::{CelShared, Condition, Facts, Window};
pub use spec::{DomainSpec, Level};

/// One call as the domain layer sees it. `manual` is the rule's `tool`, `action` the
/// tool's own name (docs/design.md §4: `tool` = manual name, `action` = tool without prefix).
pub struct Call<'a> {
    /// Full name `manual.tool`.
    pub tool: &'a str,
    pub manual: &'a str,
    pub action: &'a str,
    pub params: &'a Map<String, Value>,
    pub tenant: Option<&'a str>,
    pub session: Option<&'a str>,
    pub user: Option<&'a str>,
}

/// What a host rule callback answers.
#[derive(Debug, Clone, PartialEq)]
pub enum HostVerdict {
    Allow,
    Deny(Option<String>),
    Escalate(Option<String>),
}

/// A rule callback from the host (Rust closure; the bindings wrap Python/JS/C
/// functions): `(tool = manual, action, params) -> verdict`, or an error (denies).
pub type HostRule = Arc<dyn Fn(String, String, Value) -> BoxFuture<'static, Result<HostVerdict, String>> + Send + Sync>;

/// Ordered so the strongest effect wins: deny > escalate > allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allow,
    Escalate,
    Deny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Escalate => "escalate",
            Outcome::Deny => "deny",
        }
    }
}

/// One check that did not simply allow.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleHit {
    pub rule: String,
    pub effect: Outcome,
    pub message: String,
}

/// The decision on a call, with the checks that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub outcome: Outcome,
    pub level: Level,
    pub hits: Vec<RuleHit>,
}

impl Decision {
    /// The messages of the hits with the deciding effect, joined.
    pub fn reason(&self) -> String {
        let mut parts: Vec<String> = self
            .hits
            .iter()
            .filter(|h| h.effect == self.outcome)
            .map(|h| format!("{} ({})", h.message, h.rule))
            .collect();
        parts.sort();
        parts.join("; ")
    }

    pub fn to_value(&self) -> Value {
        json!({
            "decision": self.outcome,
            "security_level": self.level.as_str(),
            "rules": self.hits,
            "reason": if self.hits.is_empty() { Value::Null } else { Value::String(self.reason()) },
        })
    }
}

/// A compiled declarative rule.
struct Rule {
    name: String,
    deny_if: Option<Condition>,
    escalate_if: Option<Condition>,
    window: Option<Window>,
    message: Option<String>,
}

/// Rules by tool (manual) then action, with the wildcard rules kept apart so a
/// lookup borrows the call's names and allocates nothing.
#[derive(Default)]
struct RuleIndex {
    any_tool: ActionRules,
    by_tool: HashMap<String, ActionRules>,
}

#[derive(Default)]
struct ActionRules {
    any_action: Vec<Arc<Rule>>,
    by_action: HashMap<String, Vec<Arc<Rule>>>,
}

impl ActionRules {
    fn insert(&mut self, action: Option<String>, rule: Arc<Rule>) {
        match action {
            None => self.any_action.push(rule),
            Some(a) => self.by_action.entry(a).or_default().push(rule),
        }
    }

    fn matching<'a>(&'a self, action: &str) -> impl Iterator<Item = &'a Arc<Rule>> + 'a {
        self.any_action.iter().chain(self.by_action.get(action).into_iter().flatten())
    }
}

impl RuleIndex {
    fn insert(&mut self, tool: Option<String>, action: Option<String>, rule: Arc<Rule>) {
        match tool {
            None => self.any_tool.insert(action, rule),
            Some(t) => self.by_tool.entry(t).or_default().insert(action, rule),
        }
    }

    /// Every rule for (manual, action), wildcards included.
    fn matching<'a>(&'a self, manual: &str, action: &'a str) -> impl Iterator<Item = &'a Arc<Rule>> + 'a {
        self.any_tool.matching(action).chain(self.by_tool.get(manual).into_iter().flat_map(move |r| r.matching(action)))
    }
}

pub struct Domain {
    permissions: HashMap<String, spec::PermissionSpec>,
    constants: Value,
    cel: CelShared,
    rules: RuleIndex,
    host_rules: RwLock<Vec<(String, HostRule)>>,
    security: spec::SecuritySpec,
    pub limits: RateLimits,
    pub approvals: Approvals,
}

impl Domain {
    pub fn new(spec: DomainSpec) -> Result<Domain, String> {
        let constants = Value::Object(spec.business_rules);
        let cel = CelShared::new(&constants)?;
        let mut rules = RuleIndex::default();
        let mut names = std::collections::HashSet::new();
        for (i, r) in spec.rules.iter().enumerate() {
            let at = |e: String| format!("rules[{i}] '{}': {e}", r.name);
            if r.name.trim().is_empty() {
                return Err(format!("rules[{i}]: a rule needs a name"));
            }
            if !names.insert(r.name.clone()) {
                return Err(format!("rules[{i}]: two rules are named '{}'", r.name));
            }
            if r.deny_if.is_none() && r.escalate_if.is_none() && r.allow_only_during.is_none() {
                return Err(at("needs deny_if, escalate_if or allow_only_during".into()));
            }
            let compile = |c: &Option<String>| c.as_deref().map(Condition::compile).transpose().map_err(at);
            let rule = Rule {
                name: r.name.clone(),
                deny_if: compile(&r.deny_if)?,
                escalate_if: compile(&r.escalate_if)?,
                window: r.allow_only_during.as_ref().map(Window::compile).transpose().map_err(at)?,
                message: r.message.clone(),
            };
            let any = |v: &Option<String>| v.clone().filter(|t| t != "*");
            rules.insert(any(&r.matches.tool), any(&r.matches.action), Arc::new(rule));
        }
        Ok(Domain {
            permissions: spec.permissions.into_iter().collect(),
            constants,
            cel,
            rules,
            host_rules: RwLock::new(Vec::new()),
            security: spec.security,
            limits: RateLimits::new(&spec.rate_limits)?,
            approvals: Approvals::default(),
        })
    }

    /// Add a host rule; it sees every call. Names are unique.
    pub fn add_business_rule(&self, name: &str, rule: HostRule) -> crate::Result<()> {
        let mut rules = self.host_rules.write();
        if rules.iter().any(|(n, _)| n == name) {
            return Err(crate::Error::AlreadyExists(format!("a business rule named '{name}' is already registered")));
        }
        rules.push((name.to_string(), rule));
        Ok(())
    }

    /// The config's `business_rules` constants (`constants` in expressions).
    pub fn constants(&self) -> &Value {
        &self.constants
    }

    pub fn has_host_rules(&self) -> bool {
        !self.host_rules.read().is_empty()
    }

    pub fn remove_business_rule(&self, name: &str) -> bool {
        let mut rules = self.host_rules.write();
        let before = rules.len();
        rules.retain(|(n, _)| n != name);
        rules.len() != before
    }

    /// The security level of `manual.tool`: its own entry, else its manual's, else the default.
    pub fn level(&self, tool: &str, manual: &str) -> Level {
        let levels = &self.security.levels;
        levels.get(tool).or_else(|| levels.get(manual)).copied().unwrap_or(self.security.default)
    }

    /// Decide on a call. No side effects: rate limits and approvals are the caller's.
    pub async fn decide(&self, call: &Call<'_>, now: jiff::Timestamp) -> Decision {
        let mut hits = Vec::new();
        self.check_permissions(call, &mut hits);
        let level = self.level(call.tool, call.manual);
        if level.needs_approval() {
            hits.push(RuleHit {
                rule: "security_level".into(),
                effect: Outcome::Escalate,
                message: format!("'{}' is {} and needs an approval", call.tool, level.as_str()),
            });
        }
        {
            // Scoped: `facts` borrows the call only for the declarative rules.
            let facts = Facts {
                tool: call.manual,
                action: call.action,
                params: call.params,
                tenant: call.tenant,
                session: call.session,
                now,
                constants: &self.constants,
                cel: &self.cel,
                cel_params: Default::default(),
            };
            for rule in self.rules.matching(call.manual, call.action) {
                evaluate(rule, &facts, &mut hits);
            }
        }
        let host: Vec<(String, HostRule)> = self.host_rules.read().clone();
        if !host.is_empty() {
            // Host rules run concurrently: each may wait on its host (a Python or JS thread).
            let params = Value::Object(call.params.clone());
            let verdicts = futures_util::future::join_all(
                host.iter().map(|(_, rule)| rule(call.manual.to_string(), call.action.to_string(), params.clone())),
            )
            .await;
            for ((name, _), verdict) in host.into_iter().zip(verdicts) {
                let (effect, message) = match verdict {
                    Ok(HostVerdict::Allow) => continue,
                    Ok(HostVerdict::Deny(m)) => {
                        (Outcome::Deny, m.unwrap_or_else(|| format!("business rule '{name}' denied the call")))
                    }
                    Ok(HostVerdict::Escalate(m)) => {
                        (Outcome::Escalate, m.unwrap_or_else(|| format!("business rule '{name}' asks for an approval")))
                    }
                    Err(e) => (Outcome::Deny, format!("business rule '{name}' failed, so the call is denied: {e}")),
                };
                hits.push(RuleHit { rule: name, effect, message });
            }
        }
        let outcome = hits.iter().map(|h| h.effect).max().unwrap_or(Outcome::Allow);
        Decision { outcome, level, hits }
    }

    fn check_permissions(&self, call: &Call<'_>, hits: &mut Vec<RuleHit>) {
        let Some(p) = self.permissions.get(call.manual) else { return };
        let tenant = call.tenant.and_then(|t| p.tenants.get(t));
        let enabled = tenant.and_then(|t| t.enabled).unwrap_or(p.enabled);
        let allowed = tenant.and_then(|t| t.allowed_actions.as_ref()).or(p.allowed_actions.as_ref());
        let deny = |message: String| RuleHit { rule: "permissions".into(), effect: Outcome::Deny, message };
        if !enabled {
            hits.push(deny(format!("tool '{}' is disabled", call.manual)));
        } else if allowed.is_some_and(|list| !list.iter().any(|a| a == call.action)) {
            hits.push(deny(format!("action '{}' is not among the allowed actions of '{}'", call.action, call.manual)));
        }
    }
}

fn evaluate(rule: &Rule, facts: &Facts<'_>, hits: &mut Vec<RuleHit>) {
    let message = |default: String| rule.message.as_deref().map(|m| rules::render(m, facts)).unwrap_or(default);
    let mut hit = |effect: Outcome, message: String| hits.push(RuleHit { rule: rule.name.clone(), effect, message });
    for (condition, effect) in [(&rule.deny_if, Outcome::Deny), (&rule.escalate_if, Outcome::Escalate)] {
        let Some(condition) = condition else { continue };
        match condition.eval(facts) {
            Ok(false) => {}
            Ok(true) => hit(effect, message(format!("rule '{}' matched", rule.name))),
            Err(e) => {
                hit(Outcome::Deny, format!("rule '{}' could not be evaluated, so the call is denied: {e}", rule.name))
            }
        }
    }
    if let Some(window) = &rule.window {
        if !window.contains(facts.now) {
            hit(Outcome::Deny, message(format!("calls are allowed only during {}", window.describe())));
        }
    }
}

#[cfg(test)]
mod tests;
