//! Engine configuration (`utp.yaml` / `utp.json`, same schema).
//!
//! Sections owned by later layers (permissions, rules, rate limits, security, store,
//! planner...) are kept as raw JSON in `other` until their layer parses them, so a
//! config written for the full runtime loads today.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::manual::{CALL_TEMPLATE_TYPES, CallTemplate};
use crate::parse;

/// Default cap on a manual or spec file read by discovery or registration.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Variables for `${VAR}` substitution, looked up first.
    pub variables: Map<String, Value>,
    /// Variable loaders, looked up after `variables` and before the environment.
    pub load_variables_from: Vec<VariableLoader>,
    pub discovery: DiscoveryConfig,
    /// Manuals to register when the engine starts: paths, URLs or inline manuals.
    pub manuals: Vec<Value>,
    /// python-utcp's way to name the same: call templates that lead to a manual
    /// (`http`/`sse`/`streamable_http` fetch `url`, `file` reads `file_path`, `text`
    /// holds the manual in `content`, `cli` runs `commands` and reads their output),
    /// registered after `manuals`, each under its template's `name`. Checked when the
    /// config is read (see [`manual_call_templates`]).
    #[serde(skip)]
    pub manual_call_templates: Vec<CallTemplate>,
    pub openapi: OpenApiConfig,
    /// Tool calls: timeouts, network safety, CLI and file limits.
    pub calls: CallsConfig,
    /// Result post-processors (`filter_dict`, `limit_strings`), applied in order as in python-utcp.
    pub post_processing: Vec<PostProcessor>,
    /// Directory relative paths in this config are resolved against (the config file's folder).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "variable_loader_type", rename_all = "snake_case")]
pub enum VariableLoader {
    Dotenv { env_file_path: PathBuf },
}

/// OpenAPI conversion settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OpenApiConfig {
    /// Base URL per manual name, overriding the spec's servers / host+basePath.
    pub base_urls: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DiscoveryConfig {
    /// Files larger than this are skipped with a reason (bytes).
    pub max_file_size: u64,
    /// Paths `utp tools`/`utp discover` scan when none are given.
    pub paths: Vec<String>,
    /// Plain `http://` manual URLs are allowed only to loopback unless this is set.
    pub allow_insecure_http: bool,
    /// Call-template types a manual fetched from a URL may keep (python-utcp's
    /// `allowed_communication_protocols`); empty means its own type, `http`, only.
    pub allowed_communication_protocols: Vec<String>,
    /// Let a manual fetched from a URL keep tools that run on this host (`cli`,
    /// `file`, `native`, `wasm`, `mcp` over stdio) when their type is allowed.
    pub allow_remote_local_execution: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            paths: Vec::new(),
            allow_insecure_http: false,
            allowed_communication_protocols: Vec::new(),
            allow_remote_local_execution: false,
        }
    }
}

/// Default cap on a tool's HTTP response, CLI output or file (bytes).
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 32 * 1024 * 1024;
/// Default cap on one SSE event / NDJSON line (bytes).
pub const DEFAULT_MAX_EVENT_SIZE: u64 = 1024 * 1024;
/// Host environment variables a CLI tool sees by default.
pub const DEFAULT_CLI_ENV_ALLOWLIST: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// How tools are called (`calls:` in utp.yaml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CallsConfig {
    /// Timeout of a call when neither the call nor the template sets one: seconds or "500ms"/"30s"/"2m".
    #[serde(deserialize_with = "de_duration")]
    pub default_timeout: std::time::Duration,
    /// Plain `http://` tool URLs beyond loopback.
    pub allow_insecure_http: bool,
    /// Private (RFC 1918, CGNAT, ULA), link-local and cloud-metadata addresses.
    pub allow_private_networks: bool,
    /// Cap on an HTTP response body, a CLI command's output or a file read (bytes).
    pub max_response_size: u64,
    /// Cap on one SSE event or NDJSON line (bytes).
    pub max_event_size: u64,
    /// Hosts `tcp` and `udp` tools may reach besides loopback (names or IP literals,
    /// as the templates write them); private addresses still need `allow_private_networks`.
    pub allowed_socket_hosts: Vec<String>,
    /// Host environment variables passed to CLI tools (besides the template's `env_vars`).
    pub cli_env_allowlist: Vec<String>,
    /// Root that `file` tools (and relative CLI `working_dir`s) are confined to; default:
    /// the config file's folder, else the current directory.
    pub file_root: Option<PathBuf>,
}

/// `calls.default_timeout` when the config sets none.
pub const BUILT_IN_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            default_timeout: BUILT_IN_CALL_TIMEOUT,
            allow_insecure_http: false,
            allow_private_networks: false,
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
            max_event_size: DEFAULT_MAX_EVENT_SIZE,
            allowed_socket_hosts: Vec::new(),
            cli_env_allowlist: DEFAULT_CLI_ENV_ALLOWLIST.iter().map(|s| s.to_string()).collect(),
            file_root: None,
        }
    }
}

/// A result post-processor, by `tool_post_processor_type` (python-utcp's shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "tool_post_processor_type", rename_all = "snake_case")]
pub enum PostProcessor {
    FilterDict {
        #[serde(default)]
        exclude_keys: Option<Vec<String>>,
        #[serde(default)]
        only_include_keys: Option<Vec<String>>,
        #[serde(flatten)]
        scope: PostProcessorScope,
    },
    LimitStrings {
        #[serde(default = "default_string_limit")]
        limit: usize,
        #[serde(flatten)]
        scope: PostProcessorScope,
    },
}

fn default_string_limit() -> usize {
    10_000
}

/// Which tools a post-processor applies to (tool names are full `manual.tool` names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PostProcessorScope {
    pub exclude_tools: Option<Vec<String>>,
    pub only_include_tools: Option<Vec<String>>,
    pub exclude_manuals: Option<Vec<String>>,
    pub only_include_manuals: Option<Vec<String>>,
}

impl PostProcessorScope {
    pub fn applies(&self, tool: &str, manual: &str) -> bool {
        let has = |list: &Option<Vec<String>>, x: &str| list.as_ref().map(|l| l.iter().any(|i| i == x));
        has(&self.exclude_tools, tool) != Some(true)
            && has(&self.only_include_tools, tool) != Some(false)
            && has(&self.exclude_manuals, manual) != Some(true)
            && has(&self.only_include_manuals, manual) != Some(false)
    }
}

/// A duration from seconds (number) or text: "250ms", "5s", "2m", "1h", "30d", "1.5".
pub fn parse_duration(value: &Value) -> std::result::Result<std::time::Duration, String> {
    let secs = match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a duration"))?,
        Value::String(s) => {
            let t = s.trim();
            let (num, scale) = if let Some(v) = t.strip_suffix("ms") {
                (v, 0.001)
            } else if let Some(v) = t.strip_suffix('s') {
                (v, 1.0)
            } else if let Some(v) = t.strip_suffix('m') {
                (v, 60.0)
            } else if let Some(v) = t.strip_suffix('h') {
                (v, 3600.0)
            } else if let Some(v) = t.strip_suffix('d') {
                (v, 86400.0)
            } else {
                (t, 1.0)
            };
            num.trim().parse::<f64>().map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 30s, 2m)"))? * scale
        }
        other => {
            return Err(format!("{other} is not a duration (seconds, or text like 500ms, 30s, 2m)"));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{value} is not a valid duration (must be 0 or more seconds)"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<std::time::Duration, D::Error> {
    let v = Value::deserialize(d)?;
    parse_duration(&v).map_err(serde::de::Error::custom)
}

impl Config {
    /// Build a config from a JSON value (`null` = defaults).
    pub fn from_value(value: Value) -> Result<Config> {
        if value.is_null() {
            return Ok(Config::default());
        }
        if !value.is_object() {
            return Err(Error::InvalidArgument(format!(
                "config must be an object, found {}",
                crate::json::json_kind(&value)
            )));
        }
        let mut value = value;
        let templates = value.as_object_mut().and_then(|obj| obj.remove(MANUAL_CALL_TEMPLATES));
        let mut config: Config =
            serde_json::from_value(value).map_err(|e| Error::InvalidArgument(format!("invalid config: {e}")))?;
        if let Some(templates) = templates {
            config.manual_call_templates = manual_call_templates(templates)?;
        }
        Ok(config)
    }

    /// Parse config text (JSON or YAML).
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<Config> {
        let value = parse::parse_document(text.as_bytes(), None)
            .map_err(|e| Error::InvalidArgument(format!("invalid config: {e}")))?;
        Config::from_value(value)
    }

    /// Load `utp.yaml` / `utp.json`; relative paths inside resolve against its folder.
    pub fn load(path: &Path) -> Result<Config> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::InvalidArgument(format!("cannot read config {}: {e}", path.display())))?;
        let value = parse::parse_document(&bytes, Some(path))
            .map_err(|e| Error::InvalidArgument(format!("invalid config {}: {e}", path.display())))?;
        let mut config =
            Config::from_value(value).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        config.base_dir = path.parent().map(Path::to_path_buf);
        Ok(config)
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }
}

const MANUAL_CALL_TEMPLATES: &str = "manual_call_templates";

/// The call-template types a manual can be registered from.
pub const MANUAL_TEMPLATE_TYPES: [&str; 11] =
    ["http", "sse", "streamable_http", "graphql", "file", "text", "cli", "mcp", "websocket", "tcp", "udp"];

/// Parse config `manual_call_templates` (python-utcp's key): a list of call templates,
/// each of a type in [`MANUAL_TEMPLATE_TYPES`] and valid as that type. Errors name the
/// key, the entry and, when it has one, the entry's `name`.
pub fn manual_call_templates(value: Value) -> Result<Vec<CallTemplate>> {
    let Value::Array(items) = value else {
        return Err(Error::InvalidArgument(format!(
            "invalid config: `{MANUAL_CALL_TEMPLATES}` must be a list of call templates, found {}",
            crate::json::json_kind(&value)
        )));
    };
    let mut templates = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = match item.get("name").and_then(Value::as_str) {
            Some(name) => format!("`{MANUAL_CALL_TEMPLATES}[{i}]` ('{name}')"),
            None => format!("`{MANUAL_CALL_TEMPLATES}[{i}]`"),
        };
        let bad = |why: String| Error::InvalidArgument(format!("invalid config: {at}: {why}"));
        let Some(obj) = item.as_object() else {
            return Err(bad(format!("must be a call template object, found {}", crate::json::json_kind(&item))));
        };
        let ty = match obj.get("call_template_type") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => {
                return Err(bad(format!(
                    "`call_template_type` must be a string, found {}",
                    crate::json::json_kind(other)
                )));
            }
            None => return Err(bad("has no `call_template_type`".into())),
        };
        if !MANUAL_TEMPLATE_TYPES.contains(&ty.as_str()) {
            let known = CALL_TEMPLATE_TYPES.contains(&ty.as_str());
            return Err(bad(format!(
                "{} '{ty}': manuals can be registered from {}",
                if known {
                    "this runtime cannot register a manual from call_template_type"
                } else {
                    "unknown call_template_type"
                },
                MANUAL_TEMPLATE_TYPES.join(", ")
            )));
        }
        if let Some(name) = obj.get("name").filter(|n| n.as_str().is_none_or(|s| s.trim().is_empty())) {
            return Err(bad(format!("`name` must be a non-empty string, found {}", crate::json::json_kind(name))));
        }
        if ty == "graphql" {
            crate::manual::check_graphql_shape(obj).map_err(|e| bad(format!("invalid graphql template: {e}")))?;
        }
        let template: CallTemplate =
            serde_json::from_value(item).map_err(|e| bad(format!("invalid {ty} template: {e}")))?;
        templates.push(template);
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn accepts_original_utp_sections() {
        let c = Config::from_str(
            "variables: {A: 1}\npermissions:\n  betfair: {enabled: true}\nbusiness_rules: {max_bet_amount: 1000}\n",
        )
        .unwrap();
        assert_eq!(c.variables["A"], 1);
        assert!(c.other.contains_key("permissions"));
        assert_eq!(c.discovery.max_file_size, DEFAULT_MAX_FILE_SIZE);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(Config::from_str("[1,2]").is_err());
        assert!(Config::from_value(serde_json::json!({"variables": 3})).is_err());
        assert!(
            Config::from_value(serde_json::json!({"load_variables_from": [{"variable_loader_type": "vault"}]}))
                .is_err()
        );
        assert!(Config::from_value(serde_json::json!({"calls": {"default_timeout": "soon"}})).is_err());
        assert!(Config::from_value(serde_json::json!({"calls": {"default_timeout": -1}})).is_err());
        assert!(
            Config::from_value(serde_json::json!({"post_processing": [{"tool_post_processor_type": "x"}]})).is_err()
        );
    }

    #[test]
    fn manual_call_templates_are_read_and_checked() {
        let c = Config::from_str(
            "manual_call_templates:\n  - {name: weather, call_template_type: http, url: 'https://x.dev/utcp'}\n  - {call_template_type: file, file_path: m.yaml}\n",
        )
        .unwrap();
        assert_eq!(c.manual_call_templates.len(), 2);
        assert!(!c.other.contains_key("manual_call_templates"));
        let message = |v: Value| Config::from_value(json!({ "manual_call_templates": v })).unwrap_err().to_string();
        assert!(message(json!({"a": 1})).contains("`manual_call_templates` must be a list"));
        assert!(message(json!([3])).contains("`manual_call_templates[0]`: must be a call template object"));
        assert!(
            message(json!([{"name": "w"}])).contains("`manual_call_templates[0]` ('w'): has no `call_template_type`")
        );
        assert!(message(json!([{"call_template_type": "carrier_pigeon"}])).contains("unknown call_template_type"));
        assert!(message(json!([{"call_template_type": "native"}])).contains("cannot register a manual"));
        assert!(
            message(json!([{"call_template_type": "http"}])).contains("invalid http template: missing field `url`")
        );
        assert!(
            message(json!([{"call_template_type": "file", "file_path": "x", "name": ""}])).contains("`name` must be")
        );
    }

    #[test]
    fn calls_section_and_post_processors() {
        let c = Config::from_str(
            "calls: {default_timeout: 250ms, allow_private_networks: true}\npost_processing:\n  - {tool_post_processor_type: limit_strings, limit: 5, only_include_manuals: [m]}\n",
        )
        .unwrap();
        assert_eq!(c.calls.default_timeout, std::time::Duration::from_millis(250));
        assert!(c.calls.allow_private_networks && !c.calls.allow_insecure_http);
        let PostProcessor::LimitStrings { limit, scope } = &c.post_processing[0] else { panic!() };
        assert_eq!(*limit, 5);
        assert!(scope.applies("m.t", "m") && !scope.applies("n.t", "n"));
        for (v, ms) in
            [(serde_json::json!(2), 2000), (serde_json::json!("1.5s"), 1500), (serde_json::json!("2m"), 120_000)]
        {
            assert_eq!(parse_duration(&v).unwrap().as_millis(), ms);
        }
    }
}
