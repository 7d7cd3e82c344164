//! Policy on the engine (the domain layer, docs/design.md §6): the pre-call check, dry runs, approvals and host
//! rules, with an event for every decision that is not a plain allow.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::calls::traced;
use super::{CallOptions, Engine};
use crate::domain::{ApprovalInfo, ApprovalStatus, Call, Decision, HostRule, Outcome};
use crate::error::{Error, Result};
use crate::events::{Event, kinds};
use crate::registry::RegisteredTool;

impl Engine {
    /// Run the domain checks for a call about to run: decide, wait for (or fail fast
    /// on) an approval when escalated, then take the rate limits. Publishes
    /// `policy.denied`, `approval.requested`, `approval.resolved`, `ratelimit.limited`.
    /// Returns the decision that let the call through, for its `tool.called` event.
    pub(crate) async fn authorize(
        &self,
        tool: &RegisteredTool,
        params: &Map<String, Value>,
        options: &CallOptions,
        timeout: Duration,
    ) -> Result<Value> {
        let domain = self.domain();
        let call = call_of(tool, params, options);
        let decide = domain.decide(&call, jiff::Timestamp::now());
        let decision = if domain.has_host_rules() {
            // Host rules may take a while: they count against the call's deadline and
            // its cancellation, like the tool itself.
            let late = || {
                Error::Timeout(format!("call to '{}': the business rules did not decide within {timeout:?}", call.tool))
            };
            let started = std::time::Instant::now();
            tokio::select! {
                decision = tokio::time::timeout(timeout, decide) => match decision {
                    // Rules run on the caller's thread are not abandoned: late is a timeout all the same.
                    Ok(_) if super::calls::overran(started, timeout) => return Err(late()),
                    Ok(decision) => decision,
                    Err(_) => return Err(late()),
                },
                _ = cancelled(options) => {
                    return Err(Error::Cancelled(format!("call to '{}' cancelled while its business rules ran", call.tool)));
                }
            }
        } else {
            decide.await
        };
        let mut audit = Map::new();
        audit.insert("decision".into(), Value::String(decision.outcome.as_str().into()));
        audit.insert("security_level".into(), Value::String(decision.level.as_str().into()));
        if !decision.hits.is_empty() {
            audit.insert("rules".into(), json!(decision.hits));
        }
        match decision.outcome {
            Outcome::Allow => {}
            Outcome::Deny => return Err(self.denied(&call, options, &decision)),
            Outcome::Escalate => {
                let approval = self.escalate(&call, &decision, options, timeout).await?;
                audit.insert("approval_id".into(), Value::String(approval));
            }
        }
        domain.limits.acquire(&call).map(|()| Value::Object(audit)).map_err(|limited| {
            self.publish(
                &call,
                options,
                Event::new(kinds::RATELIMIT_LIMITED)
                    .data(json!({"limit": limited.limit, "retry_after_ms": limited.retry_after.as_millis() as u64})),
            );
            Error::RateLimited {
                message: format!(
                    "call to '{}' rate limited ({}); retry after {:.3} s",
                    call.tool,
                    limited.limit,
                    limited.retry_after.as_secs_f64()
                ),
                retry_after: limited.retry_after,
            }
        })
    }

    fn denied(&self, call: &Call<'_>, options: &CallOptions, decision: &Decision) -> Error {
        self.publish(call, options, Event::new(kinds::POLICY_DENIED).data(decision.to_value()));
        Error::PermissionDenied(format!("call to '{}' denied: {}", call.tool, decision.reason()))
    }

    /// Wait for (or fail fast on) an approval; returns the id of the approval used.
    async fn escalate(
        &self,
        call: &Call<'_>,
        decision: &Decision,
        options: &CallOptions,
        timeout: Duration,
    ) -> Result<String> {
        let approvals = &self.domain().approvals;
        // A call retried with an approval granted earlier (fail-fast flow) runs once.
        if let Some(id) = options.approval_id.as_deref() {
            return approvals.consume(id, call.tool).map(|()| id.to_string());
        }
        let (info, mut rx) = approvals.request(call.tool, call.tenant, call.session, decision.reason());
        if let Some(commit) = self.persist_approval(&info) {
            // Recorded before anyone is told of it, so an approval id never outlives a crash unknown.
            commit.wait().await?;
        }
        let mut data = decision.to_value();
        data["approval_id"] = Value::String(info.id.clone());
        self.publish(call, options, Event::new(kinds::APPROVAL_REQUESTED).data(data));
        if options.fail_fast_on_approval {
            return Err(Error::ApprovalRequired {
                message: format!(
                    "call to '{}' needs an approval: {}; approve '{}' and call again with that approval id",
                    call.tool,
                    decision.reason(),
                    info.id
                ),
                approval_id: info.id,
            });
        }
        let wait = async {
            loop {
                let status = *rx.borrow_and_update();
                if status != ApprovalStatus::Pending {
                    return status;
                }
                if rx.changed().await.is_err() {
                    return ApprovalStatus::Denied;
                }
            }
        };
        let waited = tokio::select! {
            status = tokio::time::timeout(timeout, wait) => status.ok(),
            _ = cancelled(options) => return Err(Error::Cancelled(format!("call to '{}' cancelled while waiting for approval '{}'", call.tool, info.id))),
        };
        match waited {
            Some(ApprovalStatus::Approved) => approvals.consume(&info.id, call.tool).map(|()| info.id),
            Some(_) => {
                let why = approvals
                    .get(&info.id)
                    .and_then(|a| a.resolution_reason)
                    .unwrap_or_else(|| "no reason given".into());
                Err(Error::PermissionDenied(format!(
                    "call to '{}' denied: approval '{}' was refused ({why})",
                    call.tool, info.id
                )))
            }
            None => Err(Error::Timeout(format!(
                "call to '{}': approval '{}' was not granted within {timeout:?}",
                call.tool, info.id
            ))),
        }
    }

    fn publish(&self, call: &Call<'_>, options: &CallOptions, mut event: Event) {
        event = traced(event.tool(call.tool), options);
        if let Some(t) = call.tenant {
            event = event.tenant(t);
        }
        if let Some(s) = call.session {
            event = event.session(s);
        }
        self.events().publish(event);
    }

    /// Dry run of the domain checks for `tool_name` with `args`: the decision, the
    /// rules behind it and whether a rate limit would refuse the call now. Consumes
    /// no rate-limit budget, creates no approval, calls nothing.
    pub async fn check(&self, tool_name: &str, args: Value, tenant: Option<&str>) -> Result<Value> {
        let tool = self.tool(tool_name)?;
        let params = match args {
            Value::Null => Map::new(),
            Value::Object(m) => m,
            _ => {
                return Err(Error::InvalidArgument("args must be an object (or null)".into()));
            }
        };
        let options = CallOptions { tenant: tenant.map(str::to_string), ..CallOptions::default() };
        let call = call_of(&tool, &params, &options);
        let domain = self.domain();
        let decision = domain.decide(&call, jiff::Timestamp::now()).await;
        let mut out = decision.to_value();
        out["tool"] = Value::String(tool.name.clone());
        out["rate_limited"] = match domain.limits.check(&call) {
            Ok(()) => Value::Null,
            Err(l) => json!({"limit": l.limit, "retry_after_ms": l.retry_after.as_millis() as u64}),
        };
        Ok(out)
    }

    /// Add a host rule callback `(tool = manual, action, params) -> verdict` that sees every call.
    pub fn add_business_rule(&self, name: &str, rule: HostRule) -> Result<()> {
        if name.trim().is_empty() {
            return Err(Error::InvalidArgument("a business rule needs a name".into()));
        }
        self.domain().add_business_rule(name, rule)
    }

    pub fn remove_business_rule(&self, name: &str) -> bool {
        self.domain().remove_business_rule(name)
    }

    /// Approvals, oldest first (`pending_only`: those still waiting).
    pub fn approvals(&self, pending_only: bool) -> Vec<ApprovalInfo> {
        self.domain().approvals.list(pending_only)
    }

    /// Grant (or refuse) an approval. The waiting call proceeds (or is denied); a
    /// fail-fast caller may call again with `CallOptions::approval_id`.
    pub fn approve(&self, approval_id: &str, approved: bool, reason: Option<&str>) -> Result<ApprovalInfo> {
        let info = self.domain().approvals.resolve(approval_id, approved, reason)?;
        if let Some(commit) = self.persist_approval(&info) {
            commit.wait_blocking()?;
        }
        let mut event = Event::new(kinds::APPROVAL_RESOLVED)
            .tool(info.tool.clone())
            .data(json!({"approval_id": info.id, "approved": approved, "reason": reason}));
        if let Some(t) = &info.tenant {
            event = event.tenant(t.clone());
        }
        if let Some(s) = &info.session {
            event = event.session(s.clone());
        }
        self.events().publish(event);
        Ok(info)
    }
}

fn call_of<'a>(tool: &'a RegisteredTool, params: &'a Map<String, Value>, options: &'a CallOptions) -> Call<'a> {
    Call {
        tool: &tool.name,
        manual: &tool.manual,
        action: tool.action(),
        params,
        tenant: options.tenant.as_deref(),
        session: options.session.as_deref(),
        user: options.user.as_deref(),
    }
}

async fn cancelled(options: &CallOptions) {
    match &options.cancel {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}
