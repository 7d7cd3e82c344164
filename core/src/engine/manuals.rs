//! Manuals on the engine: register, discover, fetch, look up and search.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Engine, blocking};
use crate::admission::{self, Refusal, RemotePolicy};
use crate::discovery::{self, DiscoveryReport, Document, FileReport, Outcome};
use crate::error::{Error, Result};
use crate::events::kinds;
use crate::manual::{Auth, CallTemplate, Manual, sanitize_name};
use crate::openapi::{self, ConvertOptions};
use crate::registry::{Catalogue, RegisteredTool};
use crate::transport::{self, net};
use crate::vars;
use reqwest::header::{HeaderName, HeaderValue};

/// Where a manual comes from.
#[derive(Debug, Clone)]
pub enum ManualSource {
    /// A UTCP manual or OpenAPI document already parsed.
    Inline(Value),
    Path(PathBuf),
    Url(String),
}

impl ManualSource {
    /// Read a string as the bindings receive it, by the first rule that matches:
    /// - an `http(s)://` URL;
    /// - a path to an existing file;
    /// - a document (JSON or YAML text): it starts with `{`, spans several lines, or is
    ///   one line holding `key: value` (`tools: []`);
    /// - else a path (registering it then says which file was not found).
    pub fn from_text(text: &str) -> Result<ManualSource> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(Error::InvalidArgument("manual source is empty: pass a manual, a path or a URL".into()));
        }
        let lower = trimmed.get(..8).unwrap_or(trimmed).to_ascii_lowercase();
        let one_line = !trimmed.contains('\n');
        if one_line && (lower.starts_with("http://") || lower.starts_with("https://")) {
            return Ok(ManualSource::Url(trimmed.to_string()));
        }
        let document = trimmed.starts_with('{') || !one_line || trimmed.contains(": ") || trimmed.ends_with(':');
        if !document || (!trimmed.starts_with('{') && one_line && Path::new(trimmed).is_file()) {
            return Ok(ManualSource::Path(PathBuf::from(text)));
        }
        // Text starting with `{` is JSON, or else a YAML flow mapping (`{name: m, tools: []}`).
        let value = crate::parse::parse_document(trimmed.as_bytes(), None)
            .or_else(|json_error| {
                let as_yaml = trimmed
                    .starts_with('{')
                    .then(|| crate::parse::parse_document(trimmed.as_bytes(), Some(Path::new("inline.yaml"))));
                as_yaml.and_then(Result::ok).ok_or(json_error)
            })
            .map_err(|e| Error::InvalidManual(format!("inline manual (JSON or YAML text): {e}")))?;
        if !value.is_object() {
            return Err(Error::InvalidManual(format!(
                "inline manual (JSON or YAML text) must be a mapping with a `tools` list or an OpenAPI document, found {}",
                crate::json::json_kind(&value)
            )));
        }
        Ok(ManualSource::Inline(value))
    }
}

/// How long fetching a manual URL may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// An MCP client's config file found by `discover`: its path, manual name and content.
struct FoundMcpConfig {
    path: String,
    name: String,
    config: Value,
}

impl Engine {
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
        for (i, template) in self.inner.config.manual_call_templates.iter().enumerate() {
            let tools = self.register_manual_template(template).await.map_err(|e| {
                let at = match &template.common().name {
                    Some(name) => format!("manual_call_templates[{i}] ('{name}')"),
                    None => format!("manual_call_templates[{i}]"),
                };
                e.with_context(&at)
            })?;
            if let Some(first) = tools.first() {
                names.push(first.split('.').next().unwrap_or_default().to_string());
            }
        }
        Ok(names)
    }

    /// Register the manual a python-utcp manual call template leads to, under the
    /// template's `name`. Variables in the template are filled first, namespaced by
    /// that name (a template without a name is used as written).
    async fn register_manual_template(&self, template: &CallTemplate) -> Result<Vec<String>> {
        let name = template.common().name.clone();
        let template = match &name {
            Some(name) => {
                let raw = serde_json::to_value(template)
                    .map_err(|e| Error::Internal(format!("cannot serialise a call template: {e}")))?;
                let filled = self.inner.vars.substitute_template(&sanitize_name(name), &raw)?;
                serde_json::from_value(filled)
                    .map_err(|e| Error::InvalidArgument(format!("template invalid after variable substitution: {e}")))?
            }
            None => template.clone(),
        };
        let name = name.as_deref();
        match &template {
            CallTemplate::Http(t) => {
                self.register_fetched(&t.url, &t.http_method, t.request.headers.as_ref(), &template, name).await
            }
            CallTemplate::Sse(t) => {
                self.register_fetched(&t.url, "GET", t.request.headers.as_ref(), &template, name).await
            }
            CallTemplate::StreamableHttp(t) => {
                self.register_fetched(&t.url, &t.http_method, t.request.headers.as_ref(), &template, name).await
            }
            CallTemplate::Websocket(t) => self.register_websocket(t, &template, name).await,
            CallTemplate::Graphql(t) => self.register_graphql(&t.url, &template, name).await,
            CallTemplate::File(t) => {
                let path = self.inner.config.resolve_path(Path::new(&t.file_path));
                self.register_manual(ManualSource::Path(path), name).await
            }
            CallTemplate::Text(t) => match ManualSource::from_text(&t.content)? {
                source @ ManualSource::Inline(_) => self.register_manual(source, name).await,
                _ => Err(Error::InvalidArgument(
                    "a `text` manual call template holds the manual itself in `content` (JSON or YAML text)".into(),
                )),
            },
            CallTemplate::Cli(_) => {
                let Some(name) = name else {
                    return Err(Error::InvalidArgument("a `cli` manual call template needs a `name`".into()));
                };
                let output = self.inner.transports.run_template(name, &template).await?;
                let value = match output {
                    Value::String(text) => crate::parse::parse_document(text.as_bytes(), None)
                        .map_err(|e| Error::InvalidManual(format!("the command's output is not a manual: {e}")))?,
                    other => other,
                };
                self.register_value(value, Some(name), None)
            }
            CallTemplate::Mcp(t) => {
                let Some(name) = name else {
                    return Err(Error::InvalidArgument("an `mcp` manual call template needs a `name`".into()));
                };
                let manual_name = sanitize_name(name);
                let transports = &self.inner.transports;
                let tools = transport::mcp::list_tools(
                    transports,
                    &manual_name,
                    t,
                    &template,
                    self.inner.config.calls.default_timeout,
                )
                .await?;
                let manual = Manual { tools, ..Manual::empty() };
                let entry = self.inner.registry.register(&manual_name, manual)?;
                self.publish_manual_registered(&manual_name, entry.tools.len(), &[]);
                Ok(entry.tools.iter().map(|t| t.name.clone()).collect())
            }
            CallTemplate::Tcp(_) | CallTemplate::Udp(_) => {
                let Some(name) = name else {
                    let kind = template.type_name();
                    return Err(Error::InvalidArgument(format!("a `{kind}` manual call template needs a `name`")));
                };
                let (manual, origin) =
                    crate::transport::socket::discover_manual(&self.inner.transports, name, &template).await?;
                // python-utcp's rule: without a list of its own, a manual keeps its own type's tools.
                let own = [template.type_name().to_string()];
                let allowed = template.common().allowed_communication_protocols.as_deref().filter(|l| !l.is_empty());
                let remote = Remote { url: &origin, allowed_protocols: Some(allowed.unwrap_or(&own)) };
                self.register_document(discovery::classify(manual), Some(name), None, Some(remote))
            }
            other => Err(Error::InvalidArgument(format!(
                "call_template_type '{}' cannot register a manual (supported: {})",
                other.type_name(),
                crate::config::MANUAL_TEMPLATE_TYPES.join(", ")
            ))),
        }
    }

    /// Fetch a manual or OpenAPI document with `method`, `headers` and `auth`, as
    /// python-utcp's HTTP protocol does, and register it (a remote manual: §11 rules).
    async fn register_fetched(
        &self,
        raw_url: &str,
        method: &str,
        headers: Option<&serde_json::Map<String, Value>>,
        template: &CallTemplate,
        name: Option<&str>,
    ) -> Result<Vec<String>> {
        let auth = template.auth();
        let allowed_protocols = template.common().allowed_communication_protocols.as_deref();
        let url = url::Url::parse(raw_url)
            .map_err(|e| Error::InvalidArgument(format!("'{raw_url}' is not a valid URL: {e}")))?;
        net::check_url(&url, self.fetch_policy())?;
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Error::InvalidArgument(format!("'{method}' is not an HTTP method")))?;
        let mut extra = Vec::new();
        for (key, value) in headers.into_iter().flatten() {
            let value = crate::transport::arg_text(value);
            let (Ok(k), Ok(v)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) else {
                return Err(Error::InvalidArgument(format!("header '{key}' is not a valid HTTP header")));
            };
            extra.push((k, v, false));
        }
        let request = Fetch { method, headers: extra, auth };
        let doc = self.fetch_document(&url, &request).await?;
        if matches!(doc, Document::Other) {
            return Err(Error::InvalidManual(format!("no UTCP manual or OpenAPI document at {}", net::redact(&url))));
        }
        let host = url.host_str().unwrap_or("manual").to_string();
        let remote = Remote { url: url.as_str(), allowed_protocols };
        self.register_document(doc, name, Some(&host), Some(remote))
    }

    /// Ask a WebSocket server for its manual (`{"type": "utcp"}`, as python-utcp's
    /// `utcp-websocket` does) and register it as a manual fetched from that URL: it keeps
    /// only `websocket` tools unless the template's `allowed_communication_protocols` (or
    /// `discovery.allowed_communication_protocols`) names others, and the §11 rules apply.
    async fn register_websocket(
        &self,
        t: &crate::manual::WebsocketTemplate,
        template: &CallTemplate,
        name: Option<&str>,
    ) -> Result<Vec<String>> {
        let url = url::Url::parse(&t.url)
            .map_err(|e| Error::InvalidArgument(format!("'{}' is not a valid URL: {e}", t.url)))?;
        let host = url.host_str().unwrap_or("manual").to_string();
        let label = sanitize_name(name.unwrap_or(&host));
        let timeout = crate::transport::template_timeout(template)?.unwrap_or(self.inner.config.calls.default_timeout);
        let manual = crate::transport::websocket::discover(&self.inner.transports, &label, t, timeout).await?;
        let allowed: Vec<String> = match &t.common.allowed_communication_protocols {
            Some(list) => list.clone(),
            None => std::iter::once("websocket".to_string())
                .chain(self.inner.config.discovery.allowed_communication_protocols.iter().cloned())
                .collect(),
        };
        let remote = Remote { url: url.as_str(), allowed_protocols: Some(&allowed) };
        self.register_document(Document::Utcp(manual), name, Some(&host), Some(remote))
    }

    /// Introspect a GraphQL endpoint and register one tool per root Query and Mutation
    /// field (`transport::graphql::discover`), as a manual fetched from that URL.
    async fn register_graphql(
        &self,
        raw_url: &str,
        template: &CallTemplate,
        name: Option<&str>,
    ) -> Result<Vec<String>> {
        let url = url::Url::parse(raw_url)
            .map_err(|e| Error::InvalidArgument(format!("'{raw_url}' is not a valid URL: {e}")))?;
        net::check_url(&url, self.fetch_policy())?;
        let host = url.host_str().unwrap_or("graphql").to_string();
        let manual = sanitize_name(name.unwrap_or(&host));
        let timeout = crate::transport::template_timeout(template)?.unwrap_or(self.inner.config.calls.default_timeout);
        let value =
            crate::transport::graphql::discover(&self.inner.transports, &manual, template, url.as_str(), timeout)
                .await?;
        // Its tools are of the template's own type: `graphql` unless it says otherwise.
        let own_type = [String::from("graphql")];
        let allowed_protocols = template.common().allowed_communication_protocols.as_deref().or(Some(&own_type[..]));
        let remote = Remote { url: url.as_str(), allowed_protocols };
        self.register_document(Document::Utcp(value), name, Some(&host), Some(remote))
    }

    /// Register a manual; returns its tools' full names. `name` overrides the
    /// default name (file name, URL host, or `name` key of an inline manual).
    pub async fn register_manual(&self, source: ManualSource, name: Option<&str>) -> Result<Vec<String>> {
        match source {
            // A python-utcp manual call template (`client.register_manual(template)`).
            ManualSource::Inline(value)
                if value.get("call_template_type").is_some() && value.get("tools").is_none() =>
            {
                let template = inline_template(value, name)?;
                Box::pin(self.register_manual_template(&template)).await
            }
            ManualSource::Inline(value) => match discovery::classify(value) {
                Document::McpServers(config) => {
                    let Some(raw) = name
                        .map(str::to_string)
                        .or_else(|| config.get("name").and_then(Value::as_str).map(str::to_string))
                    else {
                        return Err(Error::InvalidArgument("an inline MCP config needs a name: pass `name`".into()));
                    };
                    Box::pin(self.register_mcp_config(&raw, config)).await
                }
                doc => self.register_document(doc, name, None, None),
            },
            ManualSource::Path(path) => {
                let engine = self.clone();
                let (loaded, shown) = (path.clone(), path.display().to_string());
                let doc = blocking(move || engine.load_manual_file(&loaded)).await?;
                let default = discovery::manual_name_for(&path);
                let registered = match doc {
                    Document::McpServers(config) => {
                        Box::pin(self.register_mcp_config(name.unwrap_or(&default), config)).await
                    }
                    doc => {
                        let engine = self.clone();
                        let name = name.map(str::to_string);
                        blocking(move || engine.register_document(doc, name.as_deref(), Some(&default), None)).await
                    }
                };
                registered.map_err(|e| match e {
                    Error::InvalidManual(m) if !m.contains(&shown) => Error::InvalidManual(format!("{shown}: {m}")),
                    other => other,
                })
            }
            ManualSource::Url(url) => {
                let (doc, default_name, from) = self.fetch_manual(&url).await?;
                let remote = Remote { url: &from, allowed_protocols: None };
                self.register_document(doc, name, Some(&default_name), Some(remote))
            }
        }
    }

    fn register_value(&self, value: Value, name: Option<&str>, default_name: Option<&str>) -> Result<Vec<String>> {
        self.register_document(discovery::classify(value), name, default_name, None)
    }

    /// Register a UTCP manual or an OpenAPI document (converted first).
    /// `fetched_from` is the URL the document came from: it resolves an OpenAPI
    /// document's relative servers, and makes the manual remote, so only the tools
    /// [`admission`] admits are kept (docs/design.md §11).
    fn register_document(
        &self,
        doc: Document,
        name: Option<&str>,
        default_name: Option<&str>,
        fetched_from: Option<Remote<'_>>,
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
            // Only local files and the host's own values: a fetched config would name
            // commands for this machine to run.
            Document::McpServers(_) => {
                return Err(Error::InvalidManual(
                    "an MCP config (`mcpServers`) is registered from a local file or an inline value, not from a URL"
                        .into(),
                ));
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
        let base_url = self.inner.config.openapi.base_urls.get(&manual_name).cloned();
        let host_chose_base_url = base_url.is_some();
        let mut manual = match manual {
            Ok(v) => Manual::from_value(v),
            Err(spec) => {
                let opts = ConvertOptions { base_url, spec_url: fetched_from.as_ref().map(|r| r.url.to_string()) };
                openapi::convert_spec(spec, &opts)
            }
        }
        .map_err(|e| Error::InvalidManual(format!("manual '{manual_name}': {e}")))?;
        let refused = match fetched_from {
            Some(remote) => {
                if !host_chose_base_url {
                    manual.fetched_from = Some(remote.url.to_string());
                }
                self.admit_remote(&mut manual, &manual_name, &remote, !host_chose_base_url)?
            }
            None => Vec::new(),
        };
        let entry = self.inner.registry.register(&manual_name, manual)?;
        tracing::debug!(manual = %manual_name, tools = entry.tools.len(), "manual registered");
        self.publish_manual_registered(&manual_name, entry.tools.len(), &refused);
        Ok(entry.tools.iter().map(|t| t.name.clone()).collect())
    }

    /// Drop the tools of a manual fetched from `from` that the host does not allow
    /// (docs/design.md §11), with a warning each; every tool refused is an error (`SECURITY`),
    /// so a manual never registers silently empty.
    fn admit_remote(
        &self,
        manual: &mut Manual,
        manual_name: &str,
        remote: &Remote<'_>,
        check_targets: bool,
    ) -> Result<Vec<Refusal>> {
        let from = remote.url;
        let source =
            url::Url::parse(from).map_err(|e| Error::InvalidArgument(format!("'{from}' is not a valid URL: {e}")))?;
        let discovery = &self.inner.config.discovery;
        let policy = RemotePolicy {
            source: &source,
            allowed_protocols: remote.allowed_protocols.unwrap_or(&discovery.allowed_communication_protocols),
            allow_local_execution: discovery.allow_remote_local_execution,
            check_targets,
        };
        let offered = manual.tools.len();
        let refused = admission::admit(manual, &policy);
        for r in &refused {
            tracing::warn!(
                manual = %manual_name, tool = %r.tool, call_template_type = %r.call_template_type, reason = %r.reason,
                "tool of a manual fetched from a URL left out"
            );
        }
        if offered > 0 && manual.tools.is_empty() {
            let list: Vec<String> = refused.iter().map(|r| format!("'{}': {}", r.tool, r.reason)).collect();
            return Err(Error::Security(format!(
                "manual '{manual_name}' from {}: every tool was refused: {}",
                net::redact(&source),
                list.join("; ")
            )));
        }
        Ok(refused)
    }

    /// Read and classify the manual file at `path` (blocking).
    fn load_manual_file(&self, path: &Path) -> Result<Document> {
        // `metadata` also fails for a name too long to be a path: say what was expected.
        if std::fs::metadata(path).is_err() {
            let shown = crate::transport::excerpt(&path.display().to_string(), 120);
            return Err(Error::NotFound(format!(
                "no manual file {shown}: a manual is given as a path to a file, an http(s) URL, or JSON or YAML text"
            )));
        }
        match discovery::load_document(path, self.inner.config.discovery.max_file_size)? {
            Document::Other => Err(Error::InvalidManual(format!(
                "{}: neither a UTCP manual (an object with a `tools` list), an OpenAPI document, nor an MCP config (`mcpServers`)",
                path.display()
            ))),
            doc => Ok(doc),
        }
    }

    /// Register an MCP client's config file (`{"mcpServers": {...}}`) as the `mcp`
    /// manual `name` of those servers, as python-utcp's `mcp` template would be.
    async fn register_mcp_config(&self, name: &str, config: Value) -> Result<Vec<String>> {
        let mcp_servers = config.get("mcpServers").cloned().unwrap_or(Value::Null);
        let template = serde_json::json!({
            "name": name, "call_template_type": "mcp", "config": {"mcpServers": mcp_servers},
        });
        let template = inline_template(template, Some(name))?;
        Box::pin(self.register_manual_template(&template)).await
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
        let (mut report, mcp_configs) = blocking(move || engine.discover_path(&root)).await?;
        // MCP configs start or reach their servers: registered here, off the blocking pool.
        for FoundMcpConfig { path, name, config } in mcp_configs {
            let outcome = match Box::pin(self.register_mcp_config(&name, config)).await {
                Ok(tools) => Outcome::Registered { manual: name, tools: tools.len() },
                Err(e) => Outcome::failed(&e),
            };
            report.files.push(FileReport { path, outcome });
        }
        report.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(report)
    }

    /// Register what `root` holds, but for MCP configs, returned to be registered async.
    fn discover_path(&self, root: &Path) -> Result<(DiscoveryReport, Vec<FoundMcpConfig>)> {
        let meta = std::fs::metadata(root)
            .map_err(|_| Error::NotFound(format!("{}: no such file or directory", root.display())))?;
        let max = self.inner.config.discovery.max_file_size;
        let (candidates, mut files) = if meta.is_dir() {
            discovery::scan(root, max)
        } else {
            let explicit = true;
            (vec![discovery::Candidate { path: root.to_path_buf(), explicit_manual: explicit }], Vec::new())
        };
        let mut mcp_configs = Vec::new();
        for candidate in candidates {
            let outcome = match discovery::load_document(&candidate.path, max) {
                Ok(Document::McpServers(config)) => {
                    let name = discovery::manual_name_for(&candidate.path);
                    mcp_configs.push(FoundMcpConfig { path: candidate.path.display().to_string(), name, config });
                    continue;
                }
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
        Ok((DiscoveryReport { root: root.display().to_string(), files }, mcp_configs))
    }

    /// Hear the engine's MCP servers: a server whose tools changed has them listed
    /// again; a server started again is a `tool.transport` event. Holds the engine weakly.
    pub(super) fn listen_to_tool_servers(&self) {
        let weak = Arc::downgrade(&self.inner);
        self.inner.transports.mcp.set_notices(Arc::new(move |notice| {
            let Some(inner) = weak.upgrade() else { return };
            let engine = Engine { inner };
            match notice {
                transport::mcp::Notice::ToolsChanged { manual, server } => {
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
                    runtime.spawn(async move {
                        if let Err(e) = engine.relist_mcp_server(&manual, &server).await {
                            tracing::warn!(manual, server, "mcp tools changed, listing them again failed: {e}");
                        }
                    });
                }
                transport::mcp::Notice::Restarting { manual, server, attempt, delay } => {
                    let data = serde_json::json!({
                        "manual": manual, "server": server, "action": "restart",
                        "attempt": attempt, "delay_ms": delay.as_millis() as u64,
                    });
                    engine.inner.events.publish(crate::events::Event::new(kinds::TOOL_TRANSPORT).data(data));
                }
            }
        }));
    }

    /// List the tools of `server` of MCP manual `manual` again and swap them in, the
    /// manual's other tools kept: all in one step, so a lookup sees the old or the new.
    async fn relist_mcp_server(&self, manual: &str, server: &str) -> Result<()> {
        let Some(entry) = self.inner.registry.snapshot().manual(manual).cloned() else { return Ok(()) };
        let prefix = format!("{server}.");
        let Some(template) =
            entry.tools.iter().find(|t| t.tool.name.starts_with(&prefix)).map(|t| t.tool.tool_call_template.clone())
        else {
            return Ok(());
        };
        let CallTemplate::Mcp(mcp) = &template else { return Ok(()) };
        let Some((_, spec)) = transport::mcp::servers(mcp)?.into_iter().find(|(name, _)| name == server) else {
            return Ok(());
        };
        let timeout = self.inner.config.calls.default_timeout;
        let fresh =
            transport::mcp::list_server_tools(&self.inner.transports, manual, mcp, &template, server, &spec, timeout)
                .await?;
        // Kept tools get their manual prefix back, as listed ones have it (see `list_server_tools`).
        let kept = entry.tools.iter().filter(|t| !t.tool.name.starts_with(&prefix));
        let mut tools: Vec<_> =
            kept.map(|t| crate::manual::Tool { name: format!("{manual}.{}", t.tool.name), ..t.tool.clone() }).collect();
        tools.extend(fresh);
        let updated = Manual {
            tools,
            utcp_version: entry.utcp_version.clone(),
            manual_version: entry.manual_version.clone(),
            ..Manual::empty()
        };
        let replaced = self.inner.registry.replace(manual, updated)?;
        self.publish_manual(kinds::MANUAL_REGISTERED, manual, replaced.tools.len());
        Ok(())
    }

    pub fn deregister_manual(&self, name: &str) -> bool {
        let tools = self.inner.registry.snapshot().manual(name).map_or(0, |m| m.tools.len());
        let removed = self.inner.registry.deregister(name);
        if removed {
            self.inner.transports.remove_natives_of(name);
            self.inner.transports.websockets.forget_manual(name);
            self.inner.transports.mcp.close_manual(name);
            self.publish_manual(kinds::MANUAL_DEREGISTERED, name, tools);
        }
        removed
    }

    /// Every registered tool, ordered by full name.
    pub fn tools(&self) -> Vec<Arc<RegisteredTool>> {
        self.inner.registry.tools()
    }

    pub fn tool(&self, name: &str) -> Result<Arc<RegisteredTool>> {
        self.inner
            .registry
            .tool(name)
            .ok_or_else(|| Error::NotFound(format!("no tool named '{name}' (tool names are `manual.tool`)")))
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
        let first = self.fetch_document(&url, &Fetch::get()).await;
        let first = match first {
            Ok(doc @ (Document::Utcp(_) | Document::OpenApi(_) | Document::McpServers(_))) => {
                return Ok((doc, host, url.to_string()));
            }
            other => other,
        };
        let mut fallback = url.clone();
        fallback.set_path(&format!("{}/utcp", url.path().trim_end_matches('/')));
        match self.fetch_document(&fallback, &Fetch::get()).await {
            Ok(doc @ (Document::Utcp(_) | Document::OpenApi(_) | Document::McpServers(_))) => {
                Ok((doc, host, fallback.to_string()))
            }
            Ok(_) => Err(Error::InvalidManual(format!("no UTCP manual at {url} or {fallback}"))),
            Err(e) => Err(match first {
                Err(first) => Error::Transport(format!("no UTCP manual at {url} ({first}) or {fallback} ({e})")),
                Ok(_) => Error::InvalidManual(format!("no UTCP manual at {url}, and {fallback}: {e}")),
            }),
        }
    }

    async fn fetch_document(&self, url: &url::Url, request: &Fetch<'_>) -> Result<Document> {
        let max = self.inner.config.discovery.max_file_size;
        let mut spec = net::RequestSpec::new(request.method.clone(), url.clone());
        spec.headers.extend(request.headers.iter().cloned());
        // A manual from a public host may not bounce the fetch (nor its OAuth2 token
        // request) to loopback or a private address.
        spec.redirect_locality_cap = Some(net::origin_class(url));
        crate::transport::http::apply_auth(&self.inner.transports, request.auth, &mut spec, false).await?;
        spec.headers.push((
            reqwest::header::ACCEPT,
            reqwest::header::HeaderValue::from_static("application/json, application/yaml;q=0.9, */*;q=0.5"),
            false,
        ));
        spec.timeout = Some(FETCH_TIMEOUT);
        let mut response = net::send(&self.inner.transports.client()?, self.fetch_policy(), spec).await?;
        if !response.status().is_success() {
            return Err(Error::Transport(format!(
                "{} {}: HTTP {}",
                request.method,
                net::redact(url),
                response.status()
            )));
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

/// Where a manual fetched from a URL came from, and the call-template types it may
/// keep: its manual call template's `allowed_communication_protocols` when it came
/// from one, else config `discovery.allowed_communication_protocols`.
struct Remote<'a> {
    url: &'a str,
    allowed_protocols: Option<&'a [String]>,
}

/// How a manual is fetched: a plain GET, or what a manual call template says.
struct Fetch<'a> {
    method: reqwest::Method,
    headers: Vec<(HeaderName, HeaderValue, bool)>,
    auth: Option<&'a Auth>,
}

impl Fetch<'_> {
    fn get() -> Fetch<'static> {
        Fetch { method: reqwest::Method::GET, headers: Vec::new(), auth: None }
    }
}

fn transport_error(url: &url::Url, e: reqwest::Error) -> Error {
    net::request_error(&reqwest::Method::GET, url, e)
}

/// A manual call template passed inline, named `name` when given; errors say which
/// field is wrong.
fn inline_template(mut value: Value, name: Option<&str>) -> Result<CallTemplate> {
    if let (Some(name), Some(obj)) = (name, value.as_object_mut()) {
        obj.insert("name".into(), Value::String(name.into()));
    }
    let ty = value.get("call_template_type").and_then(Value::as_str).unwrap_or_default().to_string();
    if !crate::config::MANUAL_TEMPLATE_TYPES.contains(&ty.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "call_template_type '{ty}' cannot register a manual (supported: {})",
            crate::config::MANUAL_TEMPLATE_TYPES.join(", ")
        )));
    }
    if let (Some(obj), "graphql") = (value.as_object(), ty.as_str()) {
        crate::manual::check_graphql_shape(obj)
            .map_err(|e| Error::InvalidArgument(format!("invalid graphql manual call template: {e}")))?;
    }
    serde_json::from_value(value).map_err(|e| Error::InvalidArgument(format!("invalid {ty} manual call template: {e}")))
}

fn manual_of(tools: &[String], fallback: &str) -> String {
    tools.first().and_then(|t| t.split('.').next()).unwrap_or(fallback).to_string()
}
