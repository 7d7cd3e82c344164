//! Which tools of a manual fetched from a URL (a UTCP manual or an OpenAPI spec) are
//! admitted into the catalogue (docs/design.md §11). Pure decisions over the parsed manual and
//! the URL it came from; the engine applies them before registering and reports what
//! was left out. Manuals the host gives itself (inline, a file, a scanned directory)
//! are the host's own choice and are not filtered.
//!
//! Three rules, each dropping a tool with a reason:
//! 1. **Protocols** (python-utcp 1.1+): a manual keeps only tools of its own
//!    call-template type (`http`: it was fetched over HTTP) unless the host's
//!    `discovery.allowed_communication_protocols` names others.
//! 2. **Local execution** (`cli`, `file`, `native`, `wasm`, `mcp` over stdio) is never
//!    admitted from a URL unless the host sets `discovery.allow_remote_local_execution`,
//!    even when rule 1 would allow its type.
//! 3. **Targets**: a tool, its OAuth2 token URL, may not point somewhere more local than
//!    the manual's origin: a manual from a public host may not point at loopback or
//!    private addresses, one from a private address not at loopback; a manual served
//!    from loopback may point anywhere (it is the host's own machine).

use serde::Serialize;

use crate::manual::{Auth, CallTemplate, Manual, Tool};
pub use crate::transport::net::{OriginClass, origin_class};

/// The call-template type of a manual fetched from a URL, as python-utcp's manual
/// call template for it would be.
pub const REMOTE_MANUAL_TYPE: &str = "http";

/// Call-template types that run or read something on the host rather than calling
/// out over the network.
pub const LOCAL_EXECUTION_TYPES: [&str; 4] = ["cli", "file", "native", "wasm"];

/// What the host allows a manual fetched from a URL.
#[derive(Debug, Clone)]
pub struct RemotePolicy<'a> {
    /// Where the manual (or spec) was fetched from.
    pub source: &'a url::Url,
    /// `discovery.allowed_communication_protocols`; empty means [`REMOTE_MANUAL_TYPE`] only.
    pub allowed_protocols: &'a [String],
    /// `discovery.allow_remote_local_execution`.
    pub allow_local_execution: bool,
    /// Whether tool URLs are the manual's own (false when the host's
    /// `openapi.base_urls` replaced the spec's servers: the host chose them).
    pub check_targets: bool,
}

/// A tool left out of a manual, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The tool's name inside the manual.
    pub tool: String,
    pub call_template_type: String,
    pub reason: String,
}

/// Remove the tools `policy` refuses from `manual`; returns them with their reasons,
/// in manual order.
pub fn admit(manual: &mut Manual, policy: &RemotePolicy<'_>) -> Vec<Refusal> {
    let mut refused = Vec::new();
    manual.tools.retain(|tool| match refusal_reason(tool, policy) {
        None => true,
        Some(reason) => {
            refused.push(Refusal {
                tool: tool.name.clone(),
                call_template_type: tool.tool_call_template.type_name().to_string(),
                reason,
            });
            false
        }
    });
    refused
}

/// Why `tool` may not come from the manual `policy` describes, or `None`.
pub fn refusal_reason(tool: &Tool, policy: &RemotePolicy<'_>) -> Option<String> {
    let template = &tool.tool_call_template;
    let kind = template.type_name();
    let allowed = allowed_protocols(policy.allowed_protocols);
    if !allowed.iter().any(|p| p == kind) {
        return Some(format!(
            "call template type '{kind}' is not in the allowed communication protocols {allowed:?} of a manual fetched \
             from a URL (allow with discovery.allowed_communication_protocols)"
        ));
    }
    if runs_locally(template) && !policy.allow_local_execution {
        return Some(format!(
            "'{kind}' tools run on this host and are never taken from a manual fetched from a URL \
             (allow with discovery.allow_remote_local_execution)"
        ));
    }
    if policy.check_targets {
        let origin = origin_class(policy.source);
        for (what, target) in targets(template) {
            if let Some(reason) = target_refusal(origin, what, target) {
                return Some(reason);
            }
        }
    }
    None
}

/// The protocols a remote manual may use: the host's list, else its own type.
fn allowed_protocols(configured: &[String]) -> Vec<String> {
    if configured.is_empty() { vec![REMOTE_MANUAL_TYPE.to_string()] } else { configured.to_vec() }
}

/// Whether calling the template runs or reads something on this host.
pub fn runs_locally(template: &CallTemplate) -> bool {
    match template {
        // An MCP server started as a local process (stdio) is local execution.
        CallTemplate::Mcp(t) => {
            let servers = t.config.get("mcpServers").and_then(serde_json::Value::as_object);
            servers.is_some_and(|s| {
                s.values().any(|server| {
                    server.get("command").is_some()
                        || server.get("transport").and_then(serde_json::Value::as_str) == Some("stdio")
                })
            })
        }
        other => LOCAL_EXECUTION_TYPES.contains(&other.type_name()),
    }
}

/// The network addresses a template points at, with what each is.
fn targets(template: &CallTemplate) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    match template {
        CallTemplate::Http(t) => out.push(("URL", t.url.as_str())),
        CallTemplate::Sse(t) => out.push(("URL", t.url.as_str())),
        CallTemplate::StreamableHttp(t) => out.push(("URL", t.url.as_str())),
        CallTemplate::Websocket(t) => out.push(("URL", t.url.as_str())),
        CallTemplate::Graphql(t) => out.push(("URL", t.url.as_str())),
        CallTemplate::Tcp(t) | CallTemplate::Udp(t) => out.push(("host", t.host.as_str())),
        _ => {}
    }
    if let Some(Auth::OAuth2 { token_url, .. }) = template.auth() {
        out.push(("OAuth2 token URL", token_url.as_str()));
    }
    out
}

/// Why a manual of class `origin` may not point at `target` (a URL, or a bare host
/// for `tcp`/`udp`), or `None`. A target whose host is a variable cannot be checked
/// before the call, so it is refused unless the manual's origin is loopback.
pub fn target_refusal(origin: OriginClass, what: &str, target: &str) -> Option<String> {
    if origin == OriginClass::Loopback {
        return None;
    }
    let url = if what == "host" {
        let host = if target.contains(':') && !target.starts_with('[') { format!("[{target}]") } else { target.into() };
        url::Url::parse(&format!("http://{host}/")) // a special scheme, so IP hosts parse as IPs
    } else {
        url::Url::parse(target)
    };
    let host_is_variable = match &url {
        Ok(u) => u.host_str().is_some_and(|h| h.contains('$')),
        Err(_) => true,
    };
    if host_is_variable {
        return Some(format!(
            "its {what} '{target}' has no host that can be checked before the call, and the manual came from {}",
            origin.describe()
        ));
    }
    let class = url.as_ref().map(origin_class).unwrap_or(OriginClass::Public);
    (class > origin).then(|| {
        format!(
            "its {what} points at {} ({}), and a manual fetched from {} may not",
            class.describe(),
            url.as_ref().ok().and_then(|u| u.host_str()).unwrap_or(target),
            origin.describe()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(template: serde_json::Value) -> Tool {
        serde_json::from_value(json!({"name": "t", "tool_call_template": template})).unwrap()
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    fn policy<'a>(source: &'a url::Url, allowed: &'a [String], local: bool) -> RemotePolicy<'a> {
        RemotePolicy { source, allowed_protocols: allowed, allow_local_execution: local, check_targets: true }
    }

    #[test]
    fn classes() {
        assert_eq!(origin_class(&url("http://127.0.0.1:9/")), OriginClass::Loopback);
        assert_eq!(origin_class(&url("http://[::1]/")), OriginClass::Loopback);
        assert_eq!(origin_class(&url("http://[::ffff:127.0.0.1]/")), OriginClass::Loopback);
        assert_eq!(origin_class(&url("http://LOCALHOST./")), OriginClass::Loopback);
        assert_eq!(origin_class(&url("http://api.localhost/")), OriginClass::Loopback);
        assert_eq!(origin_class(&url("http://10.1.2.3/")), OriginClass::Private);
        assert_eq!(origin_class(&url("http://169.254.169.254/")), OriginClass::Private);
        assert_eq!(origin_class(&url("http://[fd00::1]/")), OriginClass::Private);
        assert_eq!(origin_class(&url("http://0.0.0.0/")), OriginClass::Private);
        assert_eq!(origin_class(&url("https://93.184.215.14/")), OriginClass::Public);
        assert_eq!(origin_class(&url("https://api.example.com/")), OriginClass::Public);
    }

    #[test]
    fn own_type_only_unless_allowed() {
        let src = url("https://tools.example.com/utcp");
        let sse = tool(json!({"call_template_type": "sse", "url": "https://api.example.com/s"}));
        assert!(refusal_reason(&sse, &policy(&src, &[], false)).unwrap().contains("allowed_communication_protocols"));
        let allowed = ["http".to_string(), "sse".to_string()];
        assert_eq!(refusal_reason(&sse, &policy(&src, &allowed, false)), None);
        let http = tool(json!({"call_template_type": "http", "url": "https://api.example.com/x"}));
        assert_eq!(refusal_reason(&http, &policy(&src, &[], false)), None);
        // A host list without `http` refuses even the manual's own type, as python-utcp.
        assert!(refusal_reason(&http, &policy(&src, &["sse".to_string()], false)).is_some());
    }

    #[test]
    fn local_execution_needs_the_opt_in_as_well() {
        let src = url("http://127.0.0.1:8080/utcp");
        let cli = tool(json!({"call_template_type": "cli", "commands": [{"command": "echo hi"}]}));
        let allowed = ["http".to_string(), "cli".to_string()];
        let reason = refusal_reason(&cli, &policy(&src, &allowed, false)).unwrap();
        assert!(reason.contains("allow_remote_local_execution"), "{reason}");
        assert_eq!(refusal_reason(&cli, &policy(&src, &allowed, true)), None);
        let stdio = tool(json!({"call_template_type": "mcp",
            "config": {"mcpServers": {"s": {"transport": "stdio", "command": "srv"}}}}));
        assert!(runs_locally(&stdio.tool_call_template));
        let remote_mcp = tool(json!({"call_template_type": "mcp",
            "config": {"mcpServers": {"s": {"transport": "http", "url": "https://mcp.example.com"}}}}));
        assert!(!runs_locally(&remote_mcp.tool_call_template));
    }

    #[test]
    fn a_public_manual_may_not_point_at_loopback_or_private_addresses() {
        let src = url("https://tools.example.com/utcp");
        let p = policy(&src, &[], false);
        for target in [
            "http://127.0.0.1:8080/x",
            "http://localhost/x",
            "https://10.0.0.5/x",
            "https://[::1]/x",
            "http://169.254.169.254/latest/meta-data",
            "https://${HOST}/x",
        ] {
            let t = tool(json!({"call_template_type": "http", "url": target}));
            assert!(refusal_reason(&t, &p).is_some(), "{target}");
        }
        let token = tool(json!({"call_template_type": "http", "url": "https://api.example.com/x",
            "auth": {"auth_type": "oauth2", "token_url": "http://127.0.0.1:9/token", "client_id": "c", "client_secret": "s"}}));
        assert!(refusal_reason(&token, &p).unwrap().contains("OAuth2 token URL"));
        let fine = tool(json!({"call_template_type": "http", "url": "https://api.example.com/${VERSION}/x"}));
        assert_eq!(refusal_reason(&fine, &p), None);
        // The host's own base URL (openapi.base_urls) is not the manual's choice.
        let loop_tool = tool(json!({"call_template_type": "http", "url": "http://127.0.0.1:8080/x"}));
        assert_eq!(refusal_reason(&loop_tool, &RemotePolicy { check_targets: false, ..p }), None);
    }

    #[test]
    fn the_origin_class_bounds_the_targets() {
        let at = |origin, target| target_refusal(origin, "URL", target).is_none();
        assert!(at(OriginClass::Loopback, "http://127.0.0.1/x"));
        assert!(at(OriginClass::Loopback, "https://10.0.0.1/x"));
        assert!(at(OriginClass::Private, "https://10.0.0.1/x"));
        assert!(!at(OriginClass::Private, "http://127.0.0.1/x"));
        assert!(at(OriginClass::Public, "https://api.example.com/x"));
        assert!(!at(OriginClass::Public, "https://192.168.1.1/x"));
        assert!(target_refusal(OriginClass::Public, "host", "127.0.0.1").is_some());
        assert!(target_refusal(OriginClass::Public, "host", "::1").is_some());
        assert!(target_refusal(OriginClass::Public, "host", "example.com").is_none());
    }

    #[test]
    fn admit_keeps_the_rest_and_lists_the_refused_in_order() {
        let src = url("http://127.0.0.1:1/utcp");
        let mut manual: Manual = serde_json::from_value(json!({"tools": [
            {"name": "a", "tool_call_template": {"call_template_type": "cli", "commands": [{"command": "id"}]}},
            {"name": "b", "tool_call_template": {"call_template_type": "http", "url": "http://127.0.0.1:1/b"}},
            {"name": "c", "tool_call_template": {"call_template_type": "text", "content": "x"}},
        ]}))
        .unwrap();
        let refused = admit(&mut manual, &policy(&src, &[], false));
        assert_eq!(manual.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(refused.iter().map(|r| r.tool.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(refused[0].call_template_type, "cli");
    }
}
