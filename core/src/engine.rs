//! The engine: the one facade every binding and the CLI drive.
//!
//! `Engine` is a cheap `Clone` handle (an `Arc`). It owns no async runtime: its
//! async methods run on whatever tokio runtime the caller provides; blocking file
//! work inside them is moved to `spawn_blocking`.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::domain::{Domain, DomainSpec};
use crate::discovery::{self, Document, DiscoveryReport, FileReport, Outcome};
use crate::error::{Error, ErrorCode, Result};
use crate::events::{Event, EventBus, EventHandler, EventsConfig, HistoryFilter, SubscriptionId, kinds};
use crate::manual::{CallTemplate, Manual, NativeTemplate, Tool, sanitize_name};
use crate::openapi::{self, ConvertOptions};
use crate::registry::{Catalogue, RegisteredTool, Registry};
use crate::transport::{self, ItemStream, NativeHandler, Transports, net};
use crate::vars::{self, Variables};

/// A call ready for its transport: tool, substituted template, arguments, timeout.
type PreparedCall = (Arc<RegisteredTool>, CallTemplate, Map<String, Value>, Duration);

/// Per-call options. Everything is optional; `Default` is a plain call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Bounds the whole call; wins over the template's `timeout` and `calls.default_timeout`.
    pub timeout: Option<Duration>,
    /// Tenant the call is made for (used by policy and rate limits as they land).
    pub tenant: Option<String>,
    /// Session the call belongs to.
    pub session: Option<String>,
    /// Cancelling this token ends the call with `CANCELLED` (a CLI tool's process group is killed).
    pub cancel: Option<CancellationToken>,
    /// User the call is made for (rate limits `per: user`).
    pub user: Option<String>,
    /// An escalated call fails at once with `APPROVAL_REQUIRED` (and the approval id)
    /// instead of waiting for `approve`.
    pub fail_fast_on_approval: bool,
    /// An approval granted earlier for this tool: the escalated call runs (once).
    pub approval_id: Option<String>,
    /// The workflow step making this call: its events (`tool.*`, `policy.denied`,
    /// `approval.*`, `ratelimit.limited`) carry the execution, workflow and step.
    pub trace: Option<Arc<CallTrace>>,
}

/// Where a call comes from in a workflow run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTrace {
    pub execution_id: String,
    pub workflow: String,
    pub step_id: String,
}

impl CallTrace {
    /// `event` with the execution, workflow and step set.
    pub fn stamp(&self, event: Event) -> Event {
        event.execution(self.execution_id.clone()).workflow(self.workflow.clone()).step(self.step_id.clone())
    }
}

/// A workflow step's attempts carry the idempotency key `<execution_id>:<step_id>`
/// (design §7); an HTTP-family template that names a header for it in
/// `idempotency_header` (e.g. `Idempotency-Key`) sends it, so a server can
/// recognise a step re-run after a retry or a crash.
fn add_idempotency_key(template: &mut CallTemplate, options: &CallOptions) {
    let Some(trace) = &options.trace else { return };
    let (extra, request) = match template {
        CallTemplate::Http(t) => (&t.extra, &mut t.request),
        CallTemplate::Sse(t) => (&t.extra, &mut t.request),
        CallTemplate::StreamableHttp(t) => (&t.extra, &mut t.request),
        _ => return,
    };
    let Some(Value::String(header)) = extra.get("idempotency_header") else {
        return;
    };
    let key = format!("{}:{}", trace.execution_id, trace.step_id);
    request.headers.get_or_insert_with(Map::new).insert(header.clone(), Value::String(key));
}

/// `event` with the call's trace, when it has one.
pub(crate) fn traced(event: Event, options: &CallOptions) -> Event {
    match &options.trace {
        Some(trace) => trace.stamp(event),
        None => event,
    }
}

/// Where a manual comes from.
#[derive(Debug, Clone)]
pub enum ManualSource {
    /// A UTCP manual or OpenAPI document already parsed.
    Inline(Value),
    Path(PathBuf),
    Url(String),
}

impl ManualSource {
    /// Read a string as the bindings receive it: inline JSON (starts with `{`),
    /// an `http(s)://` URL, or a file path.
    pub fn from_text(text: &str) -> Result<ManualSource> {
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Err(Error::InvalidArgument("manual source is empty: pass a manual, a path or a URL".into()));
        }
        if trimmed.starts_with('{') {
            let value = serde_json::from_str(trimmed)
                .map_err(|e| Error::InvalidManual(format!("inline manual is not valid JSON: {e}")))?;
            return Ok(ManualSource::Inline(value));
        }
        let lower = trimmed.get(..8).unwrap_or(trimmed).to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(ManualSource::Url(trimmed.to_string()));
        }
        Ok(ManualSource::Path(PathBuf::from(text)))
    }
}

struct Inner {
    config: Arc<Config>,
    vars: Variables,
    registry: Registry,
    transports: Transports,
    events: EventBus,
    domain: Domain,
    workflows: crate::workflow::WorkflowRuntime,
    /// The SQLite store, when the config names one (`None`: memory, or closed).
    durable: arc_swap::ArcSwapOption<crate::durable::Durable>,
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

/// How long fetching a manual URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

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
        let workflows = crate::workflow::WorkflowRuntime::from_config(&config.other)
            .map_err(|e| Error::InvalidArgument(format!("config: {e}")))?;
        let registry = Registry::new();
        let durable = crate::durable::Durable::open(crate::durable::StoreConfig::from_config(&config)?, &events)?;
        let durable = arc_swap::ArcSwapOption::new(durable.map(Arc::new));
        let engine = Engine {
            inner: Arc::new(Inner { config, vars, registry, transports, events, domain, workflows, durable }),
        };
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

    pub(crate) fn durable(&self) -> Option<Arc<crate::durable::Durable>> {
        self.inner.durable.load_full()
    }

    /// Stop: running executions stop where they are, without being recorded as
    /// finished (with a store they stay unfinished, and the next engine on it resumes
    /// them; their waiters get `CANCELLED`), no new execution starts, and the store is
    /// flushed and its file released before this returns (waiting at most `grace`
    /// for executions in the middle of a commit). Calling it again does nothing.
    pub fn close(&self, grace: Duration) {
        self.workflows().shutdown.cancel();
        let Some(durable) = self.inner.durable.swap(None) else { return };
        let deadline = Instant::now() + grace;
        // Executions hold the store only while they commit; once they let go, dropping it here
        // flushes the writer and releases the file.
        while Arc::strong_count(&durable) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if Arc::strong_count(&durable) > 1 {
            tracing::warn!("close: an execution still holds the store after {grace:?}; it is released when that commit ends");
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
    pub(crate) fn http_client(&self) -> Result<reqwest::Client> {
        self.inner.transports.client()
    }

    pub(crate) fn workflows(&self) -> &crate::workflow::WorkflowRuntime {
        &self.inner.workflows
    }

    /// The domain layer (permissions, rules, rate limits, approvals).
    pub fn domain(&self) -> &Domain {
        &self.inner.domain
    }

    /// Register the manuals listed in config `manuals`. Returns the names registered.
    pub async fn register_configured_manuals(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for item in self.inner.config.manuals.clone() {
            let source = match item {
                Value::String(s) => match ManualSource::from_text(&s)? {
                    ManualSource::Path(p) => ManualSource::Path(self.inner.config.resolve_path(&p)),
                    other => other,
                },
                other => ManualSource::Inline(other),
            };
            let tools = self.register_manual(source, None).await?;
            if let Some(first) = tools.first() {
                names.push(first.split('.').next().unwrap_or_default().to_string());
            }
        }
        Ok(names)
    }

    /// Register a manual; returns its tools' full names. `name` overrides the
    /// default name (file name, URL host, or `name` key of an inline manual).
    pub async fn register_manual(&self, source: ManualSource, name: Option<&str>) -> Result<Vec<String>> {
        match source {
            ManualSource::Inline(value) => self.register_value(value, name, None),
            ManualSource::Path(path) => {
                let engine = self.clone();
                let name = name.map(str::to_string);
                blocking(move || engine.register_path(&path, name.as_deref())).await
            }
            ManualSource::Url(url) => {
                let (doc, default_name, from) = self.fetch_manual(&url).await?;
                self.register_document(doc, name, Some(&default_name), Some(&from))
            }
        }
    }

    fn register_value(&self, value: Value, name: Option<&str>, default_name: Option<&str>) -> Result<Vec<String>> {
        self.register_document(discovery::classify(value), name, default_name, None)
    }

    /// Register a UTCP manual or an OpenAPI document (converted first).
    /// `spec_url` is where an OpenAPI document came from, for relative servers.
    fn register_document(
        &self,
        doc: Document,
        name: Option<&str>,
        default_name: Option<&str>,
        spec_url: Option<&str>,
    ) -> Result<Vec<String>> {
        let (manual, raw) = match doc {
            Document::Utcp(v) => {
                let inline_name = v.get("name").and_then(Value::as_str).map(str::to_string);
                let raw = name.map(str::to_string).or_else(|| default_name.map(str::to_string)).or(inline_name);
                (Ok(v), raw)
            }
            Document::OpenApi(spec) => {
                let title = openapi::title(&spec.doc).map(str::to_string);
                let raw = name.map(str::to_string).or_else(|| default_name.map(str::to_string)).or(title);
                (Err(spec), raw)
            }
            Document::Other => {
                return Err(Error::InvalidManual(
                    "neither a UTCP manual (an object with a `tools` list) nor an OpenAPI document".into(),
                ));
            }
        };
        let Some(raw) = raw else {
            return Err(Error::InvalidArgument(
                "an inline manual needs a name: pass `name` or give the manual a `name` key".into(),
            ));
        };
        let manual_name = sanitize_name(&raw);
        let manual = match manual {
            Ok(v) => Manual::from_value(v),
            Err(spec) => {
                let opts = ConvertOptions {
                    base_url: self.inner.config.openapi.base_urls.get(&manual_name).cloned(),
                    spec_url: spec_url.map(str::to_string),
                };
                openapi::convert_spec(spec, &opts)
            }
        }
        .map_err(|e| Error::InvalidManual(format!("manual '{manual_name}': {e}")))?;
        let entry = self.inner.registry.register(&manual_name, manual)?;
        tracing::debug!(manual = %manual_name, tools = entry.tools.len(), "manual registered");
        self.publish_manual(kinds::MANUAL_REGISTERED, &manual_name, entry.tools.len());
        Ok(entry.tools.iter().map(|t| t.name.clone()).collect())
    }

    fn register_path(&self, path: &Path, name: Option<&str>) -> Result<Vec<String>> {
        let doc = match discovery::load_document(path, self.inner.config.discovery.max_file_size)? {
            Document::Other => {
                return Err(Error::InvalidManual(format!(
                    "{}: neither a UTCP manual (an object with a `tools` list) nor an OpenAPI document",
                    path.display()
                )));
            }
            doc => doc,
        };
        let default = discovery::manual_name_for(path);
        self.register_document(doc, name, Some(&default), None).map_err(|e| match e {
            Error::InvalidManual(m) if !m.contains(&path.display().to_string()) => {
                Error::InvalidManual(format!("{}: {m}", path.display()))
            }
            other => other,
        })
    }

    /// Discover manuals in a directory (recursively), a file, or at a URL.
    pub async fn discover(&self, target: &str) -> Result<DiscoveryReport> {
        if let Ok(ManualSource::Url(url)) = ManualSource::from_text(target) {
            let outcome = match self.register_manual(ManualSource::Url(url.clone()), None).await {
                Ok(tools) => Outcome::Registered { manual: manual_of(&tools, &url), tools: tools.len() },
                Err(e) => Outcome::failed(&e),
            };
            return Ok(DiscoveryReport { root: url.clone(), files: vec![FileReport { path: url, outcome }] });
        }
        let root = PathBuf::from(target);
        let engine = self.clone();
        blocking(move || engine.discover_path(&root)).await
    }

    fn discover_path(&self, root: &Path) -> Result<DiscoveryReport> {
        let meta = std::fs::metadata(root)
            .map_err(|_| Error::NotFound(format!("{}: no such file or directory", root.display())))?;
        let max = self.inner.config.discovery.max_file_size;
        let (candidates, mut files) = if meta.is_dir() {
            discovery::scan(root, max)
        } else {
            let explicit = true;
            (vec![discovery::Candidate { path: root.to_path_buf(), explicit_manual: explicit }], Vec::new())
        };
        for candidate in candidates {
            let outcome = match discovery::load_document(&candidate.path, max) {
                Ok(doc @ (Document::Utcp(_) | Document::OpenApi(_))) => {
                    let name = discovery::manual_name_for(&candidate.path);
                    match self.register_document(doc, None, Some(&name), None) {
                        Ok(tools) => Outcome::Registered { manual: name, tools: tools.len() },
                        Err(e) => Outcome::failed(&e),
                    }
                }
                Ok(doc) => discovery::not_a_manual(&candidate, &doc),
                Err(e) => Outcome::failed(&e),
            };
            files.push(FileReport { path: candidate.path.display().to_string(), outcome });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(DiscoveryReport { root: root.display().to_string(), files })
    }

    pub fn deregister_manual(&self, name: &str) -> bool {
        let tools = self.inner.registry.snapshot().manual(name).map_or(0, |m| m.tools.len());
        let removed = self.inner.registry.deregister(name);
        if removed {
            self.inner.transports.remove_natives_of(name);
            self.publish_manual(kinds::MANUAL_DEREGISTERED, name, tools);
        }
        removed
    }

    /// Every registered tool, ordered by full name.
    pub fn tools(&self) -> Vec<Arc<RegisteredTool>> {
        self.inner.registry.tools()
    }

    pub fn tool(&self, name: &str) -> Result<Arc<RegisteredTool>> {
        self.inner.registry.tool(name).ok_or_else(|| {
            Error::NotFound(format!("no tool named '{name}' (tool names are `manual.tool`)"))
        })
    }

    /// Ranked search; `limit == 0` is unlimited; `tags` keeps tools with any of them.
    pub fn search_tools(&self, query: &str, limit: usize, tags: &[String]) -> Vec<Arc<RegisteredTool>> {
        self.inner.registry.search(query, limit, tags).into_iter().map(|(t, _)| t).collect()
    }

    /// Names of the registered manuals, sorted.
    pub fn manuals(&self) -> Vec<String> {
        self.inner.registry.snapshot().manuals().map(|m| m.name.clone()).collect()
    }

    /// The current catalogue snapshot (lock-free).
    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.inner.registry.snapshot()
    }

    /// Namespaced variables a manual or a tool (`manual.tool`) needs.
    pub fn required_variables(&self, name: &str) -> Result<Vec<String>> {
        let cat = self.inner.registry.snapshot();
        if let Some(m) = cat.manual(name) {
            return Ok(vars::required_variables(&m.name, m.tools.iter().map(|t| &t.tool)));
        }
        let tool = self.tool(name).map_err(|_| Error::NotFound(format!("no manual or tool named '{name}'")))?;
        Ok(vars::required_variables(&tool.manual, [&tool.tool]))
    }

    /// Call a tool: registry lookup → variable substitution → argument validation
    /// against the tool's `inputs` → transport (timeout, cancellation) → post-processors.
    /// `args` is an object (or `null` for none).
    pub async fn call_tool(&self, name: &str, args: Value, options: CallOptions) -> Result<Value> {
        let span = call_span(name, &options);
        async {
            let (tool, mut template, args, timeout) = self.prepare_call(name, args, &options)?;
            let policy = self.authorize(&tool, &args, &options, timeout).await?;
            add_idempotency_key(&mut template, &options);
            let started = self.call_started(&tool.name, &options, policy);
            let transports = &self.inner.transports;
            let call = AssertUnwindSafe(Box::pin(transports.call(&tool, &template, args, timeout))).catch_unwind();
            let result = async {
                guard(&tool.name, call, timeout, options.cancel.as_ref())
                    .await?
                    .map_err(|panic| Error::from_panic(panic.as_ref(), &format!("tool '{}'", tool.name)))?
            }
            .await
            .map(|r| transport::post::apply(&self.inner.config.post_processing, &tool.name, &tool.manual, r));
            self.call_finished(&tool.name, &options, started, result.as_ref().err(), false);
            result
        }
        .instrument(span)
        .await
    }

    /// Drive `future` (a call of this engine, e.g. [`Engine::call_tool`]) to completion on
    /// the calling thread, on a runtime of that thread, with an HTTP client of that thread:
    /// for hosts that block a thread per call, a call's I/O then never crosses threads
    /// (`transport::here`). An HTTP call's connection then lives on that thread's runtime,
    /// so use it for calls that end within the future (not streams). An error when the
    /// thread already runs a tokio runtime (the caller then uses its own).
    pub fn block_on_here<F: Future>(&self, future: F) -> Result<F::Output> {
        transport::here::block_on(&self.inner.transports, future)
    }

    /// Start a blocking call of the tool `name` from a host thread that waits for it
    /// (Python's `call_tool`, C's `utp_call_tool`) and say where to drive it: on the
    /// calling thread ([`Engine::block_on_here`]) when the tool is an `http` tool, no other
    /// blocking call of this engine is in progress and the thread runs no tokio runtime;
    /// else on the host's runtime. A sequential call driven here makes 1 context switch
    /// instead of 7; concurrent calls share the runtime and its pool, which serves them
    /// better (64 threads each driving their own made 7-8% fewer calls/s), and other
    /// templates stay on the runtime, where their tasks may outlive the call. Keep the
    /// returned value until the call ends.
    pub fn blocking_call(&self, name: &str) -> transport::BlockingCall<'_> {
        let http = self.tool(name).is_ok_and(|t| matches!(t.tool.tool_call_template, CallTemplate::Http(_)));
        transport::BlockingCall::start(&self.inner.transports, http)
    }

    /// Call a tool and receive its results as they arrive: the items of an `sse` or
    /// `streamable_http` tool, the one result of any other. The timeout bounds
    /// opening the stream; cancelling ends the stream with a `CANCELLED` item.
    pub async fn call_tool_stream(&self, name: &str, args: Value, options: CallOptions) -> Result<ItemStream> {
        let span = call_span(name, &options);
        let (tool, mut template, args, timeout) = self.prepare_call(name, args, &options)?;
        let policy = self.authorize(&tool, &args, &options, timeout).instrument(span.clone()).await?;
        add_idempotency_key(&mut template, &options);
        let started = self.call_started(&tool.name, &options, policy);
        let transports = &self.inner.transports;
        let open = AssertUnwindSafe(Box::pin(transports.call_stream(&tool, &template, args, timeout))).catch_unwind();
        let stream = async {
            guard(&tool.name, open, timeout, options.cancel.as_ref())
                .await?
                .map_err(|panic| Error::from_panic(panic.as_ref(), &format!("tool '{}'", tool.name)))?
        }
        .instrument(span)
        .await;
        self.call_finished(&tool.name, &options, started, stream.as_ref().err(), true);
        let stream = stream?;
        let engine = self.clone();
        let cancel = options.cancel.clone();
        let state = (stream, tool, cancel, false);
        Ok(Box::pin(futures_util::stream::unfold(state, move |(mut stream, tool, cancel, done)| {
            let engine = engine.clone();
            async move {
                if done {
                    return None;
                }
                let next = match &cancel {
                    Some(token) => tokio::select! {
                        biased;
                        _ = token.cancelled() => Some(Err(cancelled(&tool.name))),
                        item = stream.next() => item,
                    },
                    None => stream.next().await,
                };
                let item = next?;
                let stop = item.is_err();
                let item = item.map(|v| {
                    transport::post::apply(&engine.inner.config.post_processing, &tool.name, &tool.manual, v)
                });
                Some((item, (stream, tool, cancel, stop)))
            }
        })))
    }

    /// Resolve, substitute and validate: everything before the transport runs.
    fn prepare_call(
        &self,
        name: &str,
        args: Value,
        options: &CallOptions,
    ) -> Result<PreparedCall> {
        let tool = self.tool(name)?;
        let template = self.substitute_template(&tool)?;
        let args = match args {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => {
                return Err(Error::ValidationFailed(format!(
                    "tool '{}': arguments must be a JSON object, found {}",
                    tool.name,
                    transport_kind(&other)
                )));
            }
        };
        validate_args(&tool, &args)?;
        let timeout = match options.timeout {
            Some(t) => t,
            None => transport::template_timeout(&template)
                .map_err(|e| Error::InvalidManual(format!("tool '{}': {e}", tool.name)))?
                .unwrap_or(self.inner.config.calls.default_timeout),
        };
        Ok((tool, template, args, timeout))
    }

    /// The tool's call template with `${VAR}`s replaced (namespaced per manual).
    /// CLI commands are split into words first, so a value never changes the argv shape.
    fn substitute_template(&self, tool: &RegisteredTool) -> Result<CallTemplate> {
        let vars = &self.inner.vars;
        let manual = tool.manual.as_str();
        match &tool.tool.tool_call_template {
            CallTemplate::Native(_) => Ok(tool.tool.tool_call_template.clone()),
            CallTemplate::Cli(cli) => {
                let mut cli = cli.clone();
                for (i, cmd) in cli.commands.iter_mut().enumerate() {
                    let words = transport::cli::split_command(&cmd.command)
                        .map_err(|e| Error::InvalidManual(format!("tool '{}': command {i}: {e}", tool.name)))?;
                    let words = words.iter().map(|w| vars.substitute_str(manual, w)).collect::<Result<Vec<_>>>()?;
                    cmd.command = transport::cli::join_command(&words)
                        .map_err(|e| Error::InvalidManual(format!("tool '{}': command {i}: {e}", tool.name)))?;
                }
                if let Some(env) = &mut cli.env_vars {
                    for v in env.values_mut() {
                        *v = vars.substitute(manual, v)?;
                    }
                }
                if let Some(dir) = &mut cli.working_dir {
                    *dir = vars.substitute_str(manual, dir)?;
                }
                Ok(CallTemplate::Cli(cli))
            }
            template => {
                let literal = *tool.template_is_literal.get_or_init(|| {
                    serde_json::to_string(template).map(|text| !text.contains('$')).unwrap_or(false)
                });
                if literal {
                    return Ok(template.clone());
                }
                let raw = serde_json::to_value(template)
                    .map_err(|e| Error::Internal(format!("tool '{}': cannot serialise its template: {e}", tool.name)))?;
                let done = vars.substitute(manual, &raw)?;
                serde_json::from_value(done).map_err(|e| {
                    Error::InvalidManual(format!("tool '{}': template invalid after variable substitution: {e}", tool.name))
                })
            }
        }
    }

    /// Register a native tool `manual.tool` whose calls run `handler` (the manual is
    /// created when missing). `inputs` (default: any object) is checked now and
    /// validates every call. Returns the full tool name.
    pub fn register_tool(
        &self,
        full_name: &str,
        handler: NativeHandler,
        inputs: Option<Value>,
        outputs: Option<Value>,
        description: &str,
        tags: Vec<String>,
    ) -> Result<String> {
        let Some((manual, tool_name)) = full_name.split_once('.') else {
            return Err(Error::InvalidArgument(format!(
                "native tool name '{full_name}' must be `manual.tool`"
            )));
        };
        if manual.is_empty() || tool_name.is_empty() || sanitize_name(manual) != manual {
            return Err(Error::InvalidArgument(format!(
                "native tool name '{full_name}' must be `manual.tool` with a manual name of letters, digits and _"
            )));
        }
        let inputs = inputs.unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        let validator = compile_schema(&inputs)
            .map_err(|e| Error::InvalidArgument(format!("native tool '{full_name}': inputs is not a valid JSON Schema: {e}")))?;
        let tool = Tool {
            name: tool_name.to_string(),
            description: description.to_string(),
            inputs,
            outputs: outputs.unwrap_or_else(|| Value::Object(Map::new())),
            tags,
            average_response_size: None,
            tool_call_template: CallTemplate::Native(NativeTemplate::default()),
            extra: Map::new(),
        };
        let added = self.inner.registry.add_tool(manual, tool)?;
        let _ = added.validator.set(Ok(Arc::new(validator)));
        self.inner.transports.set_native(&added.name, handler);
        let tools = self.inner.registry.snapshot().manual(manual).map_or(1, |m| m.tools.len());
        self.publish_manual(kinds::MANUAL_REGISTERED, manual, tools);
        Ok(added.name.clone())
    }

    // ----- events (design §8) -----

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

    fn publish_manual(&self, kind: &'static str, manual: &str, tools: usize) {
        self.inner.events.publish(Event::new(kind).data(serde_json::json!({"manual": manual, "tools": tools})));
    }

    /// `tool.called` with the domain decision that let it run (the audit record of an
    /// allowed call); returns when the call started.
    fn call_started(&self, tool: &str, options: &CallOptions, policy: Value) -> Instant {
        let event = Event::new(kinds::TOOL_CALLED)
            .tool(tool)
            .context(options.tenant.as_deref(), options.session.as_deref())
            .data(policy);
        self.inner.events.publish(traced(event, options));
        Instant::now()
    }

    /// `tool.succeeded` / `tool.failed` and the call metrics. Event data holds the
    /// code and our own message only: a tool's output (`TOOL_FAILED` bodies, a
    /// handler's panic text) may carry anything, so it is summarised.
    fn call_finished(&self, tool: &str, options: &CallOptions, started: Instant, error: Option<&Error>, stream: bool) {
        let elapsed = started.elapsed();
        let duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        let events = &self.inner.events;
        events.metrics_handle().record_call(tool, elapsed, error.map(Error::code));
        let mut data = Map::new();
        let kind = match error {
            None => kinds::TOOL_SUCCEEDED,
            Some(e) => {
                let code = e.code();
                let message = match code {
                    ErrorCode::ToolFailed => match e.http_status() {
                        Some(status) => format!("tool '{tool}' failed with HTTP status {status}"),
                        None => format!("tool '{tool}' failed"),
                    },
                    ErrorCode::Panic => format!("tool '{tool}' panicked"),
                    _ => e.to_string(),
                };
                data.insert("code".into(), code.as_str().into());
                data.insert("message".into(), message.into());
                if let Some(status) = e.http_status() {
                    data.insert("status".into(), status.into());
                }
                kinds::TOOL_FAILED
            }
        };
        data.insert("duration_ms".into(), duration_ms.into());
        if stream {
            data.insert("stream".into(), true.into());
        }
        let event = Event::new(kind).tool(tool).context(options.tenant.as_deref(), options.session.as_deref());
        events.publish(traced(event, options).data(Value::Object(data)));
    }

    /// The policy for fetching manuals: `discovery.allow_insecure_http`, and private
    /// addresses as for tool calls.
    fn fetch_policy(&self) -> net::NetPolicy {
        net::NetPolicy {
            allow_insecure_http: self.inner.config.discovery.allow_insecure_http,
            allow_private: self.inner.config.calls.allow_private_networks,
        }
    }

    /// Fetch a manual or OpenAPI document from `url`, or a manual from `url/utcp`
    /// when `url` holds neither. Returns the document, the default manual name (the
    /// URL's host) and the URL it came from.
    async fn fetch_manual(&self, raw_url: &str) -> Result<(Document, String, String)> {
        let url = url::Url::parse(raw_url)
            .map_err(|e| Error::InvalidArgument(format!("'{raw_url}' is not a valid URL: {e}")))?;
        net::check_url(&url, self.fetch_policy())?;
        let host = url.host_str().unwrap_or("manual").to_string();
        let first = self.fetch_document(&url).await;
        let first = match first {
            Ok(doc @ (Document::Utcp(_) | Document::OpenApi(_))) => return Ok((doc, host, url.to_string())),
            other => other,
        };
        let mut fallback = url.clone();
        fallback.set_path(&format!("{}/utcp", url.path().trim_end_matches('/')));
        match self.fetch_document(&fallback).await {
            Ok(doc @ (Document::Utcp(_) | Document::OpenApi(_))) => Ok((doc, host, fallback.to_string())),
            Ok(_) => Err(Error::InvalidManual(format!("no UTCP manual at {url} or {fallback}"))),
            Err(e) => Err(match first {
                Err(first) => Error::Transport(format!("no UTCP manual at {url} ({first}) or {fallback} ({e})")),
                Ok(_) => Error::InvalidManual(format!("no UTCP manual at {url}, and {fallback}: {e}")),
            }),
        }
    }

    async fn fetch_document(&self, url: &url::Url) -> Result<Document> {
        let max = self.inner.config.discovery.max_file_size;
        let mut spec = net::RequestSpec::new(reqwest::Method::GET, url.clone());
        spec.headers.push((
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json, application/yaml;q=0.9, */*;q=0.5"),
            false,
        ));
        spec.timeout = Some(FETCH_TIMEOUT);
        let mut response = net::send(&self.inner.transports.client()?, self.fetch_policy(), spec).await?;
        if !response.status().is_success() {
            return Err(Error::Transport(format!("GET {}: HTTP {}", net::redact(url), response.status())));
        }
        if response.content_length().is_some_and(|n| n > max) {
            return Err(Error::InvalidArgument(format!("{url}: response is over the {max} byte cap")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(url, e))? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(Error::InvalidArgument(format!("{url}: response is over the {max} byte cap")));
            }
            body.extend_from_slice(&chunk);
        }
        let path = Path::new(url.path());
        let (value, parts) = crate::parse::parse_spec_document(&body, Some(path))
            .map_err(|e| Error::InvalidManual(format!("{url}: {e}")))?;
        Ok(discovery::classify_parsed(value, parts))
    }
}

/// The tracing span of one call: tool, tenant, session; never arguments.
fn call_span(tool: &str, options: &CallOptions) -> tracing::Span {
    tracing::info_span!(
        "call_tool",
        tool = tool,
        tenant = options.tenant.as_deref(),
        session = options.session.as_deref()
    )
}

fn transport_error(url: &url::Url, e: reqwest::Error) -> Error {
    net::request_error(&reqwest::Method::GET, url, e)
}

fn manual_of(tools: &[String], fallback: &str) -> String {
    tools.first().and_then(|t| t.split('.').next()).unwrap_or(fallback).to_string()
}

fn transport_kind(v: &Value) -> &'static str {
    transport::kind(v)
}

fn cancelled(tool: &str) -> Error {
    Error::Cancelled(format!("tool '{tool}': call cancelled"))
}

/// Bound `fut` by `timeout` and `cancel`.
async fn guard<T>(
    tool: &str,
    fut: impl std::future::Future<Output = T>,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<T> {
    let timed = async {
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| Error::Timeout(format!("tool '{tool}': no result within {timeout:?}")))
    };
    match cancel {
        Some(token) => tokio::select! {
            biased;
            _ = token.cancelled() => Err(cancelled(tool)),
            r = timed => r,
        },
        None => timed.await,
    }
}

fn compile_schema(schema: &Value) -> std::result::Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

/// At most this many violations are listed in a `VALIDATION_FAILED` message.
const MAX_VIOLATIONS: usize = 20;

/// The tool's compiled `inputs` validator (compiled once per tool, with the manual's
/// shared `$defs` attached).
fn tool_validator(tool: &RegisteredTool) -> Result<&jsonschema::Validator> {
    let validator = tool.validator.get_or_init(|| {
        let schema = match &tool.shared_defs {
            Some(defs) => defs.attach_checked(&tool.tool.inputs).map_err(|(_, e)| e)?,
            None => tool.tool.inputs.clone(),
        };
        compile_schema(&schema).map(Arc::new)
    });
    validator.as_deref().map_err(|e| {
        Error::InvalidManual(format!("tool '{}': its inputs are not a valid JSON Schema: {e}", tool.name))
    })
}

/// Violations of `instance` as `<JSON pointer>: <reason>` lines (values masked: they
/// may be secrets), at most `MAX_VIOLATIONS` plus a count of the rest. `ignore`
/// drops violations the caller knows about.
fn violations(
    validator: &jsonschema::Validator,
    instance: &Value,
    ignore: impl Fn(&jsonschema::ValidationError<'_>) -> bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    for e in validator.iter_errors(instance).filter(|e| !ignore(e)) {
        total += 1;
        if lines.len() < MAX_VIOLATIONS {
            let pointer = e.instance_path().to_string();
            let at = if pointer.is_empty() { "/".to_string() } else { pointer };
            lines.push(format!("{at}: {}", e.masked_with("value")));
        }
    }
    if total > lines.len() {
        lines.push(format!("... and {} more", total - lines.len()));
    }
    lines
}

/// Check `args` against the tool's `inputs`. Every violation is listed with its JSON pointer.
fn validate_args(tool: &RegisteredTool, args: &Map<String, Value>) -> Result<()> {
    let validator = tool_validator(tool)?;
    let instance = Value::Object(args.clone());
    if validator.is_valid(&instance) {
        return Ok(());
    }
    let lines = violations(validator, &instance, |_| false);
    Err(Error::ValidationFailed(format!(
        "tool '{}': arguments do not match its input schema: {}",
        tool.name,
        lines.join("; ")
    )))
}

/// Check the literal part of a workflow step's arguments before it runs: `skeleton`
/// holds the literal values; `computed` names the top-level arguments an expression
/// fills at run time (their absence is not a violation). Returns the violations.
pub(crate) fn check_literal_args(tool: &RegisteredTool, skeleton: &Value, computed: &[String]) -> Result<Vec<String>> {
    let validator = tool_validator(tool)?;
    if validator.is_valid(skeleton) {
        return Ok(Vec::new());
    }
    Ok(violations(validator, skeleton, |e| match e.kind() {
        jsonschema::error::ValidationErrorKind::Required { property } => {
            e.instance_path().to_string().is_empty() && property.as_str().is_some_and(|p| computed.iter().any(|c| c == p))
        }
        _ => false,
    }))
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
