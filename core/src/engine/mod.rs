//! The engine: the one facade every binding and the CLI drive.
//!
//! `Engine` is a cheap `Clone` handle (an `Arc`). It owns no async runtime: its
//! async methods run on whatever tokio runtime the caller provides; blocking file
//! work inside them is moved to `spawn_blocking`.
//!
//! The subsystems below it (registry, transports, domain, events, store, workflow,
//! planner) know nothing of `Engine`; each `impl Engine` block here wires them for one
//! concern: `manuals`, `calls`, `events`, `policy`, `workflows` (with the executor in
//! `runner`), `intents`, `planner`, `durable` (the link to the store).

mod calls;
mod durable;
mod events;
mod intents;
mod manuals;
mod planner;
mod policy;
mod runner;
mod workflows;

pub use calls::{CallOptions, CallTrace};
pub use durable::StoreConfig;
pub use intents::{IntentContext, IntentHandler, IntentTarget};
pub use manuals::ManualSource;

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long `close` lets an MCP server exit after SIGTERM before it is killed.
const MCP_SERVER_GRACE: Duration = Duration::from_secs(2);

use serde_json::Value;

use crate::config::Config;
use crate::domain::{Domain, DomainSpec};
use crate::error::{Error, Result};
use crate::events::{EventBus, EventsConfig};
use crate::registry::Registry;
use crate::transport::Transports;
use crate::vars::Variables;
use crate::workflow::WorkflowRuntime;

struct Inner {
    config: Arc<Config>,
    vars: Variables,
    registry: Registry,
    transports: Transports,
    events: EventBus,
    domain: Domain,
    workflows: WorkflowRuntime,
    intents: intents::Intents,
    /// The SQLite store, when the config names one (`None`: memory, or closed).
    durable: arc_swap::ArcSwapOption<durable::Durable>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("tools", &self.inner.registry.snapshot().tool_count()).finish()
    }
}

impl Engine {
    /// A new engine. Reads dotenv files named in the config once, here.
    pub fn new(config: Config) -> Result<Engine> {
        let vars = Variables::new(&config)?;
        let events = EventBus::new(EventsConfig::from_value(config.other.get("events"))?);
        let domain = DomainSpec::from_config(&config.other)
            .and_then(Domain::new)
            .map_err(|e| Error::InvalidArgument(format!("config: {e}")))?;
        let config = Arc::new(config);
        let transports = Transports::new(config.clone());
        let workflows =
            WorkflowRuntime::from_config(&config.other).map_err(|e| Error::InvalidArgument(format!("config: {e}")))?;
        let registry = Registry::new();
        let durable = durable::Durable::open(StoreConfig::from_config(&config)?, &events)?;
        let durable = arc_swap::ArcSwapOption::new(durable.map(Arc::new));
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                vars,
                registry,
                transports,
                events,
                domain,
                workflows,
                intents: intents::Intents::default(),
                durable,
            }),
        };
        engine.listen_to_tool_servers();
        engine.load_from_store()?;
        Ok(engine)
    }

    /// A ready engine: [`Engine::new`], the config's `manuals` registered, and (with a
    /// store whose `recover` is on, the default) the executions a previous process
    /// left unfinished resumed on the current tokio runtime. What the bindings and the CLI open.
    pub async fn open(config: Config) -> Result<Engine> {
        let engine = Engine::new(config)?;
        engine.register_configured_manuals().await?;
        if engine.durable().is_some_and(|d| d.config.recover) {
            engine.recover().await?;
        }
        Ok(engine)
    }

    /// The store executions and events are persisted in (`None` with `store: memory`, or once closed).
    pub fn store(&self) -> Option<Arc<dyn crate::store::Store>> {
        self.inner.durable.load().as_ref().map(|d| d.store.clone())
    }

    fn durable(&self) -> Option<Arc<durable::Durable>> {
        self.inner.durable.load_full()
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.workflows().shutdown.is_cancelled()
    }

    /// Stop: running executions stop where they are, without being recorded as
    /// finished (with a store they stay unfinished, and the next engine on it resumes
    /// them; their waiters get `CANCELLED`), no new execution starts, and the store is
    /// flushed and its file released before this returns (waiting at most `grace`
    /// for executions in the middle of a commit). Calling it again does nothing.
    pub fn close(&self, grace: Duration) {
        self.workflows().shutdown.cancel();
        self.inner.transports.mcp.close(grace.min(MCP_SERVER_GRACE));
        let Some(durable) = self.inner.durable.swap(None) else { return };
        let deadline = Instant::now() + grace;
        // Executions hold the store only while they commit; once they let go, dropping it here
        // flushes the writer and releases the file.
        while Arc::strong_count(&durable) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if Arc::strong_count(&durable) > 1 {
            tracing::warn!(
                "close: an execution still holds the store after {grace:?}; it is released when that commit ends"
            );
        }
        drop(durable);
    }

    /// Retention now: delete finished executions (with their steps) and events
    /// older than `age` from the store, never touching unfinished executions.
    /// Rows deleted; 0 without a store.
    pub fn prune_store(&self, age: Duration) -> Result<usize> {
        self.durable().map_or(Ok(0), |d| d.prune(age))
    }

    /// A new engine from config JSON (`null` or `{}` for defaults).
    pub fn from_json(config: Value) -> Result<Engine> {
        Engine::new(Config::from_value(config)?)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn variables(&self) -> &Variables {
        &self.inner.vars
    }

    /// The engine's pooled HTTP client (the planner's model adapters share it).
    fn http_client(&self) -> Result<reqwest::Client> {
        self.inner.transports.client()
    }

    fn workflows(&self) -> &WorkflowRuntime {
        &self.inner.workflows
    }

    /// The domain layer (permissions, rules, rate limits, approvals).
    pub fn domain(&self) -> &Domain {
        &self.inner.domain
    }
}

/// Run blocking work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("background task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_source_guessing() {
        assert!(matches!(ManualSource::from_text("{\"tools\": []}").unwrap(), ManualSource::Inline(_)));
        assert!(matches!(ManualSource::from_text("HTTPS://x.dev/m").unwrap(), ManualSource::Url(_)));
        assert!(matches!(ManualSource::from_text("./m.utcp.json").unwrap(), ManualSource::Path(_)));
        assert_eq!(ManualSource::from_text("{bad").unwrap_err().code(), crate::ErrorCode::InvalidManual);
        assert_eq!(ManualSource::from_text("  ").unwrap_err().code(), crate::ErrorCode::InvalidArgument);
    }

    /// The bindings run these futures on multi-thread runtimes (napi's `AsyncBlock`,
    /// `spawn`): each must stay `Send`. A compile-time check.
    #[test]
    fn public_futures_are_send() {
        fn assert_send<T: Send>(_: T) {}
        let engine = Engine::from_json(Value::Null).unwrap();
        assert_send(engine.call_tool("m.t", Value::Null, CallOptions::default()));
        assert_send(engine.call_tool_stream("m.t", Value::Null, CallOptions::default()));
        assert_send(engine.register_manual(ManualSource::Url("https://x.invalid/m".into()), None));
        assert_send(engine.discover("."));
        assert_send(engine.register_configured_manuals());
    }
}
