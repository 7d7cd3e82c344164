//! The store from Node (docs/design.md §9): resume executions a previous process left
//! unfinished, read the store's audit log, prune old rows.
//!
//! With `new Engine(config, { store: 'sqlite:PATH' })` (or config `store`) executions,
//! their steps, events, approvals and session state are committed to a SQLite file;
//! `execution` / `executions` (src/workflow.rs) read it too. With the memory store
//! these still work: `recover` resumes nothing, `storedEvents` reads the in-memory
//! history, `prune` deletes nothing.

use napi::Env;
use napi::bindgen_prelude::AsyncBlock;
use napi_derive::napi;
use serde_json::Value;
use utp_core::ErrorCode;
use utp_core::host::KeyStyle;
use utp_core::store::EventFilter;

use crate::json::StrictJson;
use crate::{JsEngine, coded, core_err, guard, invalid, json_kind, promise};

/// `{ executionId, type, after, limit, since, until }` of storedEvents, checked by
/// `utp_core::host` (a `type` must match at least one event type).
fn event_filter(options: StrictJson) -> napi::Result<EventFilter> {
    let options = options.0.into_optional("storedEvents options").map_err(invalid)?.unwrap_or(Value::Null);
    utp_core::host::event_filter(&options, "storedEvents", KeyStyle::Camel).map_err(core_err)
}

/// `olderThan` of prune: seconds (a number) or text like '30d', '12h', '90s'.
fn parse_older_than(value: StrictJson) -> napi::Result<std::time::Duration> {
    let value = value.0.into_value("olderThan").map_err(invalid)?;
    if !matches!(value, Value::Number(_) | Value::String(_)) {
        return Err(invalid(format!(
            "olderThan must be seconds (a number) or text like '30d', found {}",
            json_kind(&value)
        )));
    }
    utp_core::config::parse_duration(&value).map_err(|e| invalid(format!("olderThan: {e}")))
}

#[napi]
impl JsEngine {
    /// Resume the executions a previous process left unfinished in the store (the
    /// constructor already did for those whose tools were registered then): steps it
    /// committed keep their results and never run again, the rest run now. Executions
    /// using a tool that is still not registered stay in the store for a later call,
    /// so call it after `registerTool`. Resolves to the ids resumed (none with the
    /// memory store); follow them with `waitExecution(id)`.
    #[napi(catch_unwind, ts_return_type = "Promise<string[]>")]
    pub fn recover(&self, env: &Env) -> napi::Result<AsyncBlock<Vec<String>>> {
        guard(|| {
            let engine = self.engine()?;
            promise(env, async move { engine.recover().await.map_err(core_err) })
        })
    }

    /// Events from the store's audit log (every process that used the store), in
    /// store order, each with its store sequence number `seq`; with the memory store,
    /// this engine's in-memory history. Options: `executionId`, `type` (a glob as in
    /// `subscribe`), `after` (events with a greater `seq`, for paging), `limit`,
    /// `since` / `until` (RFC 3339 times; `since` inclusive, `until` exclusive).
    #[napi(
        catch_unwind,
        ts_args_type = "options?: { executionId?: string | null; type?: string | null; after?: number | null; limit?: number | null; since?: string | null; until?: string | null } | null",
        ts_return_type = "Array<Record<string, any>>"
    )]
    pub fn stored_events(&self, options: StrictJson) -> napi::Result<Vec<Value>> {
        guard(|| {
            let engine = self.engine()?;
            let filter = event_filter(options)?;
            engine.stored_events(&filter).map_err(core_err)
        })
    }

    /// Delete finished executions (with their steps) and events older than
    /// `olderThan` (seconds, or text like '30d', '12h') from the store; running and
    /// suspended executions are never touched. Resolves to the rows deleted (0 with
    /// the memory store). Config `store.retention` does this periodically.
    #[napi(catch_unwind, ts_args_type = "olderThan: number | string", ts_return_type = "Promise<number>")]
    pub fn prune(&self, env: &Env, older_than: StrictJson) -> napi::Result<AsyncBlock<i64>> {
        guard(|| {
            let engine = self.engine()?;
            let age = parse_older_than(older_than)?;
            promise(env, async move {
                let deleted = tokio::task::spawn_blocking(move || engine.prune_store(age))
                    .await
                    .map_err(|e| coded(ErrorCode::Internal, format!("prune: its thread failed: {e}")))?
                    .map_err(core_err)?;
                Ok(i64::try_from(deleted).unwrap_or(i64::MAX))
            })
        })
    }
}
