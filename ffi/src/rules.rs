//! Business rules written in C (`utp_rule_fn`, the `utp_rule_result_t` verdict sink) and
//! `utp_check`, the dry run of the domain checks. Rules run on the thread blocked in
//! `utp_call_tool` when the call has no deadline of its own
//! (`utp_core::host_callbacks_here`), else on the engine's blocking pool.

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;
use std::sync::Arc;

use serde_json::Value;
use utp_core::{HostRule, HostVerdict};

use crate::callbacks::{CallbackScope, Registration, UtpFreeFn, deregister, lock};
use crate::engine::{UtpEngine, engine_and_out, engine_ref};
use crate::error::{UtpError, guard, invalid, optional_str, required_str};
use crate::strings::json_out;

/// A C business rule: called before a tool call runs (after its arguments were
/// validated) with `tool` = the manual's name, `action` = the tool's name without the
/// manual prefix (`"betfair"`, `"placeBet"` for `betfair.placeBet`) and
/// `params_json` = the call's arguments as a JSON object. The strings are valid only
/// during the call. The rule allows the call unless it calls
/// utp_rule_result_deny() or utp_rule_result_escalate() on `result`.
///
/// Threads: runs on the engine's library threads (its blocking pool), possibly on
/// several at once for concurrent calls, and also for utp_check(); or on the thread
/// blocked in utp_call_tool() for that call when the call has no timeout of its own
/// (see utp_call_tool()). It may call any
/// utp_* function (including utp_call_tool(), which runs the rules again: beware of
/// unbounded recursion) except utp_engine_free().
pub type UtpRuleFn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        tool: *const c_char,
        action: *const c_char,
        params_json: *const c_char,
        result: *mut UtpRuleResult,
    ),
>;

/// The verdict sink handed to a C business rule (`utp_rule_result_t`).
pub struct UtpRuleResult {
    verdict: HostVerdict,
}

impl UtpRuleResult {
    /// Record a verdict; the strongest wins (deny > escalate > allow), and among equals the latest reason.
    fn set(&mut self, verdict: HostVerdict) {
        let rank = |v: &HostVerdict| match v {
            HostVerdict::Allow => 0,
            HostVerdict::Escalate(_) => 1,
            HostVerdict::Deny(_) => 2,
        };
        if rank(&verdict) > rank(&self.verdict) {
            self.verdict = verdict;
        } else if rank(&verdict) == rank(&self.verdict) {
            match (&mut self.verdict, verdict) {
                (HostVerdict::Deny(old), HostVerdict::Deny(Some(new)))
                | (HostVerdict::Escalate(old), HostVerdict::Escalate(Some(new))) => *old = Some(new),
                _ => {}
            }
        }
    }
}

/// Call a C rule once (on a blocking-pool thread, or the calling thread).
fn call_rule(
    registration: &Registration,
    func: unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, *const c_char, *mut UtpRuleResult),
    tool: &str,
    action: &str,
    params: &Value,
) -> Result<HostVerdict, String> {
    // A rule removed while this call was being decided no longer applies.
    let Some(_running) = registration.enter() else { return Ok(HostVerdict::Allow) };
    let text = |s: String, what: &str| CString::new(s).map_err(|e| format!("{what} holds a NUL byte: {e}"));
    let tool = text(tool.to_string(), "the tool name")?;
    let action = text(action.to_string(), "the action name")?;
    let params = text(params.to_string(), "the arguments")?;
    let mut result = UtpRuleResult { verdict: HostVerdict::Allow };
    let _scope = CallbackScope::enter(false);
    // SAFETY: a function pointer registered through utp_add_business_rule, called with
    // its user_data, NUL-terminated strings and a sink, all alive for the call.
    unsafe { func(registration.user_data, tool.as_ptr(), action.as_ptr(), params.as_ptr(), &mut result) };
    Ok(result.verdict)
}

/// Add a C business rule named `name` (unique per engine). It sees every tool call
/// (and every utp_check()) of the engine; see utp_rule_fn. Deny beats escalate beats
/// allow across all rules, so the order of rules does not matter. An escalated call
/// waits for utp_approve(), or fails at once with UTP_ERR_APPROVAL_REQUIRED when its
/// options have `"fail_fast_on_approval": true`.
///
/// `free_user_data` (nullable) is called exactly once with `user_data`: when the rule
/// is removed with utp_remove_business_rule(), when the engine is freed, or at once
/// when this call fails (a NULL `callback`, a duplicate name: UTP_ERR_ALREADY_EXISTS).
///
/// # Safety
/// `engine` is a live handle; `name` is NULL or NUL-terminated; `callback` and
/// `free_user_data` are NULL or valid functions, callable from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_add_business_rule(
    engine: *mut UtpEngine,
    name: *const c_char,
    callback: UtpRuleFn,
    user_data: *mut c_void,
    free_user_data: UtpFreeFn,
) -> *mut UtpError {
    // Owned first, so user_data is finalised on every error path too.
    let registration = Arc::new(Registration::new(user_data, free_user_data));
    guard(move || {
        let Some(func) = callback else { return Err(invalid("callback is NULL")) };
        // SAFETY: NULL or a live handle per the contract.
        let handle = unsafe { engine_ref(engine) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        let called = registration.clone();
        let rule: HostRule = Arc::new(move |tool: String, action: String, params: Value| {
            let registration = called.clone();
            if utp_core::host_callbacks_here() {
                // The thread blocked in utp_call_tool runs it: no hand-off, no wake-up.
                let verdict = utp_core::run_host_callback(|| call_rule(&registration, func, &tool, &action, &params));
                return Box::pin(std::future::ready(verdict));
            }
            Box::pin(async move {
                let run = move || call_rule(&registration, func, &tool, &action, &params);
                if tokio::runtime::Handle::try_current().is_err() {
                    return run();
                }
                // C code may block: run it on the blocking pool, never on a worker.
                tokio::task::spawn_blocking(run).await.map_err(|e| format!("the C rule's thread failed: {e}"))?
            })
        });
        let mut rules = lock(&handle.rules);
        handle.engine.add_business_rule(name, rule)?;
        rules.insert(name.to_string(), registration);
        Ok(())
    })
}

/// Remove the business rule `name`. `*out_removed` is set to true when a rule of that
/// name was registered, false otherwise (not an error). No call enters the rule after
/// this returns. Called from a host thread, it also waits until running calls of the
/// rule have returned and its finaliser has run. Called from inside a callback, it
/// does not wait: the finaliser then runs on a library thread once the last running
/// call of the rule has returned (at once if none is running).
///
/// # Safety
/// `engine` is a live handle; `name` is NULL or NUL-terminated; `out_removed` is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_remove_business_rule(
    engine: *mut UtpEngine,
    name: *const c_char,
    out_removed: *mut bool,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_removed` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_removed, "out_removed", false) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let name = unsafe { required_str(name, "name") }?;
        *out = deregister(&handle.rules, name, || handle.engine.remove_business_rule(name));
        Ok(())
    })
}

/// Deny the call being checked, with `reason` (nullable: a default naming the rule),
/// which the caller sees in the UTP_ERR_PERMISSION_DENIED message and in the
/// `policy.denied` event. Only valid during the rule callback. Deny beats escalate.
/// An invalid `reason` (not UTF-8) still denies (with the reason made valid) and
/// returns an error.
///
/// # Safety
/// `result` is the sink passed to the running rule; `reason` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_rule_result_deny(result: *mut UtpRuleResult, reason: *const c_char) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { set_rule_result(result, reason, HostVerdict::Deny) }
}

/// Escalate the call being checked to a human approval, with `reason` (nullable).
/// Only valid during the rule callback. As utp_rule_result_deny() otherwise.
///
/// # Safety
/// `result` is the sink passed to the running rule; `reason` is NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_rule_result_escalate(result: *mut UtpRuleResult, reason: *const c_char) -> *mut UtpError {
    // SAFETY: forwarded from the caller's contract.
    unsafe { set_rule_result(result, reason, HostVerdict::Escalate) }
}

/// # Safety
/// As [`utp_rule_result_deny`].
unsafe fn set_rule_result(
    result: *mut UtpRuleResult,
    reason: *const c_char,
    verdict: fn(Option<String>) -> HostVerdict,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: NULL or the live sink per the contract.
        let sink = unsafe { result.as_mut() }.ok_or_else(|| invalid("result is NULL"))?;
        if reason.is_null() {
            sink.set(verdict(None));
            return Ok(());
        }
        // SAFETY: non-NULL and NUL-terminated per the contract.
        let bytes = unsafe { CStr::from_ptr(reason) };
        match bytes.to_str() {
            Ok(text) => {
                sink.set(verdict(Some(text.to_string())));
                Ok(())
            }
            Err(e) => {
                // Fail closed: the verdict stands, with a readable reason.
                sink.set(verdict(Some(bytes.to_string_lossy().into_owned())));
                Err(invalid(format!("reason is not valid UTF-8: {e}")))
            }
        }
    })
}

/// Dry run of the domain checks (permissions, security level, rules, business rules)
/// for calling `tool_name` with `args_json` (nullable: no arguments) for `tenant`
/// (nullable). Calls nothing, consumes no rate-limit budget, creates no approval.
/// `*out_decision_json` receives `{"tool", "decision": "allow"|"deny"|"escalate",
/// "security_level", "rules": [{"rule", "effect", "message"}], "reason",
/// "rate_limited": null | {"limit", "retry_after_ms"}}`; free it with utp_string_free().
/// Blocks until the rules have run (C business rules run on library threads).
///
/// # Safety
/// `engine` is a live handle; strings are NULL or NUL-terminated; the out-parameter
/// is valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn utp_check(
    engine: *mut UtpEngine,
    tool_name: *const c_char,
    args_json: *const c_char,
    tenant: *const c_char,
    out_decision_json: *mut *mut c_char,
) -> *mut UtpError {
    guard(|| {
        // SAFETY: per the contract, `engine` is NULL or a live handle and `out_decision_json` is NULL or
        // valid for writes (both NULLs are checked).
        let (handle, out) = unsafe { engine_and_out(engine, out_decision_json, "out_decision_json", ptr::null_mut()) }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let tool_name = unsafe { required_str(tool_name, "tool_name") }?;
        // SAFETY: NULL or NUL-terminated per the contract.
        let args = match unsafe { optional_str(args_json, "args_json") }? {
            None => Value::Null,
            Some(text) => {
                serde_json::from_str(text).map_err(|e| invalid(format!("args_json is not valid JSON: {e}")))?
            }
        };
        // SAFETY: NULL or NUL-terminated per the contract.
        let tenant = unsafe { optional_str(tenant, "tenant") }?;
        let decision = handle.block_on(handle.engine.check(tool_name, args, tenant))??;
        *out = json_out(&decision)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_results_keep_the_strongest_verdict() {
        let mut r = UtpRuleResult { verdict: HostVerdict::Allow };
        r.set(HostVerdict::Escalate(Some("e".into())));
        r.set(HostVerdict::Deny(None));
        r.set(HostVerdict::Escalate(Some("later".into())));
        assert_eq!(r.verdict, HostVerdict::Deny(None));
        r.set(HostVerdict::Deny(Some("why".into())));
        r.set(HostVerdict::Deny(None));
        assert_eq!(r.verdict, HostVerdict::Deny(Some("why".into())));
    }
}
