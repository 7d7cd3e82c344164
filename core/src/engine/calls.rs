//! Calling tools: the `call_tool` pipeline, streams, blocking calls and native tools.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::events::{Event, kinds};
use crate::manual::{CallTemplate, NativeTemplate, Tool, sanitize_name};
use crate::registry::RegisteredTool;
use crate::schema::{compile_schema, validate_args};
use crate::transport::{self, ItemStream, NativeHandler};

/// A call ready for its transport: tool, substituted template, arguments, timeout.
type PreparedCall = (Arc<RegisteredTool>, CallTemplate, Map<String, Value>, Duration);

/// A call admitted by [`Engine::admit`]: ready for its transport, its `tool.called` published.
struct AdmittedCall {
    tool: Arc<RegisteredTool>,
    template: CallTemplate,
    args: Map<String, Value>,
    timeout: Duration,
    started: Instant,
}

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
/// (docs/design.md §7); an HTTP-family template that names a header for it in
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
pub(super) fn traced(event: Event, options: &CallOptions) -> Event {
    match &options.trace {
        Some(trace) => trace.stamp(event),
        None => event,
    }
}

impl Engine {
    /// Call a tool: registry lookup → variable substitution → argument validation
    /// against the tool's `inputs` → transport (timeout, cancellation) → post-processors.
    /// `args` is an object (or `null` for none).
    pub async fn call_tool(&self, name: &str, args: Value, options: CallOptions) -> Result<Value> {
        let span = call_span(name, &options);
        async {
            let call = self.admit(name, args, &options).await?;
            let transports = &self.inner.transports;
            let progress = self.progress_sink(&call.tool, &call.template, &options);
            let run = transport::with_progress(
                progress,
                transports.call(&call.tool, &call.template, call.args, call.timeout),
            );
            let result = guard_unwinding(&call.tool, run, call.timeout, options.cancel.as_ref()).await.map(|r| {
                transport::post::apply(&self.inner.config.post_processing, &call.tool.name, &call.tool.manual, r)
            });
            self.call_finished(&call.tool.name, &options, call.started, result.as_ref().err(), false);
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
    /// better (docs/benchmarks.md, "Figures formerly in code comments"), and other
    /// templates stay on the runtime, where their tasks may outlive the call. Keep the
    /// returned value until the call ends.
    ///
    /// [`transport::BlockingCall::callbacks_here`] says to drive it on the calling thread
    /// with its host callbacks run right there ([`Engine::drive_with_callbacks`]) when
    /// [`Engine::host_callbacks_here`] allows it and the thread runs no tokio runtime.
    pub fn blocking_call(&self, name: &str, options: &CallOptions) -> transport::BlockingCall<'_> {
        let tool = self.tool(name).ok();
        let http = tool.as_ref().is_some_and(|t| matches!(t.tool.tool_call_template, CallTemplate::Http(_)));
        let callbacks = tool.as_ref().is_some_and(|t| self.callbacks_here_for(t, options));
        transport::BlockingCall::start(&self.inner.transports, http, callbacks)
    }

    /// Whether a call of `name` with `options` may run its host callbacks (a native
    /// tool's handler, the business rules of the host) on the thread that polls it
    /// (`transport::here::host_callbacks_here`): the call has host callbacks, its tool does
    /// no I/O of its own, and nothing but the built-in default bounds it (no per-call,
    /// template or configured timeout). A callback run on the caller's thread cannot be
    /// abandoned at a deadline: such a call finds out it was late when the callback
    /// returns (`TIMEOUT`, as if it had been abandoned); a call with a deadline of its own
    /// runs its callbacks on the host's pool, so that the wait can stop at the deadline.
    pub fn host_callbacks_here(&self, name: &str, options: &CallOptions) -> bool {
        self.tool(name).is_ok_and(|t| self.callbacks_here_for(&t, options))
    }

    fn callbacks_here_for(&self, tool: &RegisteredTool, options: &CallOptions) -> bool {
        let template = &tool.tool.tool_call_template;
        let native = matches!(template, CallTemplate::Native(_));
        let has_callbacks = native || self.domain().has_host_rules();
        let own_deadline = options.timeout.is_some()
            || !matches!(transport::template_timeout(template), Ok(None))
            || self.inner.config.calls.default_timeout != crate::config::BUILT_IN_CALL_TIMEOUT;
        has_callbacks && !template.does_io() && !own_deadline
    }

    /// Drive `future` (a call of this engine, e.g. [`Engine::call_tool`]) to completion on
    /// the calling thread, in the context of the host's `runtime` (timers), with the host
    /// callbacks it reaches run right on this thread: a host thread that waits for a call
    /// anyway runs them itself, with no hand-off to a pool thread and no wake-up back. For
    /// calls that [`Engine::blocking_call`] marks `callbacks_here`.
    pub fn drive_with_callbacks<F: Future>(&self, runtime: &tokio::runtime::Handle, future: F) -> F::Output {
        transport::here::drive_with_callbacks(runtime, future)
    }

    /// Call a tool and receive its results as they arrive: the items of an `sse`,
    /// `streamable_http` or `websocket` tool or of a GraphQL subscription, an `mcp`
    /// tool's progress and then its result, the one result of any other. The timeout
    /// bounds opening the stream; cancelling ends the stream with a `CANCELLED` item.
    pub async fn call_tool_stream(&self, name: &str, args: Value, options: CallOptions) -> Result<ItemStream> {
        let span = call_span(name, &options);
        let AdmittedCall { tool, template, args, timeout, started } =
            self.admit(name, args, &options).instrument(span.clone()).await?;
        let transports = &self.inner.transports;
        let progress = self.progress_sink(&tool, &template, &options);
        let open = transport::with_progress(progress, transports.call_stream(&tool, &template, args, timeout));
        let stream = guard_unwinding(&tool, open, timeout, options.cancel.as_ref()).instrument(span).await;
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
                let item = item
                    .map(|v| transport::post::apply(&engine.inner.config.post_processing, &tool.name, &tool.manual, v));
                Some((item, (stream, tool, cancel, stop)))
            }
        })))
    }

    /// Everything before the transport runs, shared by [`Engine::call_tool`] and
    /// [`Engine::call_tool_stream`]: lookup, substitution, validation, the domain
    /// checks, the idempotency key, and `tool.called`.
    async fn admit(&self, name: &str, args: Value, options: &CallOptions) -> Result<AdmittedCall> {
        let (tool, mut template, args, timeout) = self.prepare_call(name, args, options)?;
        let policy = self.authorize(&tool, &args, options, timeout).await?;
        add_idempotency_key(&mut template, options);
        let started = self.call_started(&tool.name, options, policy);
        Ok(AdmittedCall { tool, template, args, timeout, started })
    }

    /// Resolve, substitute and validate: everything before the transport runs.
    fn prepare_call(&self, name: &str, args: Value, options: &CallOptions) -> Result<PreparedCall> {
        let tool = self.tool(name)?;
        let template = self.substitute_template(&tool)?;
        let args = match args {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => {
                return Err(Error::ValidationFailed(format!(
                    "tool '{}': arguments must be a JSON object, found {}",
                    tool.name,
                    crate::json::json_kind(&other)
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
                let literal = *tool
                    .template_is_literal
                    .get_or_init(|| serde_json::to_string(template).map(|text| !text.contains('$')).unwrap_or(false));
                if literal {
                    return Ok(template.clone());
                }
                let raw = serde_json::to_value(template).map_err(|e| {
                    Error::Internal(format!("tool '{}': cannot serialise its template: {e}", tool.name))
                })?;
                let done = vars.substitute_template(manual, &raw)?;
                serde_json::from_value(done).map_err(|e| {
                    Error::InvalidManual(format!(
                        "tool '{}': template invalid after variable substitution: {e}",
                        tool.name
                    ))
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
            return Err(Error::InvalidArgument(format!("native tool name '{full_name}' must be `manual.tool`")));
        };
        if manual.is_empty() || tool_name.is_empty() || sanitize_name(manual) != manual {
            return Err(Error::InvalidArgument(format!(
                "native tool name '{full_name}' must be `manual.tool` with a manual name of letters, digits and _"
            )));
        }
        let inputs = inputs.unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        let validator = compile_schema(&inputs).map_err(|e| {
            Error::InvalidArgument(format!("native tool '{full_name}': inputs is not a valid JSON Schema: {e}"))
        })?;
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

    /// Where a call's progress notifications go: `tool.progress` events, for the
    /// templates that have them (MCP).
    fn progress_sink(
        &self,
        tool: &RegisteredTool,
        template: &CallTemplate,
        options: &CallOptions,
    ) -> Option<transport::mcp::ProgressSink> {
        if !matches!(template, CallTemplate::Mcp(_)) {
            return None;
        }
        let events = self.inner.events.clone();
        let (name, options) = (tool.name.clone(), options.clone());
        Some(Arc::new(move |progress: Value| {
            let event = Event::new(kinds::TOOL_PROGRESS)
                .tool(&name)
                .context(options.tenant.as_deref(), options.session.as_deref())
                .data(progress);
            events.publish(traced(event, &options));
        }))
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
    let no_result = || Error::Timeout(format!("tool '{tool}': no result within {timeout:?}"));
    let timed = async {
        let started = Instant::now();
        let out = tokio::time::timeout(timeout, fut).await.map_err(|_| no_result())?;
        // A callback run on the caller's thread cannot be abandoned: late is a timeout all the same.
        match overran(started, timeout) {
            true => Err(no_result()),
            false => Ok(out),
        }
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

/// Whether a call polled on a host thread with its callbacks run there
/// (`transport::here::host_callbacks_here`) went past `timeout` since `started`.
pub(super) fn overran(started: Instant, timeout: Duration) -> bool {
    transport::here::host_callbacks_here() && started.elapsed() > timeout
}

/// Run a transport future under [`guard`], a panic inside it becoming `PANIC` for `tool`.
async fn guard_unwinding<T>(
    tool: &RegisteredTool,
    fut: impl std::future::Future<Output = Result<T>>,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> Result<T> {
    let fut = AssertUnwindSafe(Box::pin(fut)).catch_unwind();
    guard(&tool.name, fut, timeout, cancel)
        .await?
        .map_err(|panic| Error::from_panic(panic.as_ref(), &format!("tool '{}'", tool.name)))?
}
