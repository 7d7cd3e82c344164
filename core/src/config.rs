//! Engine configuration (`utp.yaml` / `utp.json`, same schema).
//!
//! Sections owned by later layers (permissions, rules, rate limits, security, store,
//! planner...) are kept as raw JSON in `other` until their layer parses them, so a
//! config written for the full runtime loads today.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
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
    pub openapi: OpenApiConfig,
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
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig { max_file_size: DEFAULT_MAX_FILE_SIZE, paths: Vec::new(), allow_insecure_http: false }
    }
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
                match value {
                    Value::Array(_) => "a list",
                    Value::String(_) => "a string",
                    _ => "a scalar",
                }
            )));
        }
        serde_json::from_value(value).map_err(|e| Error::InvalidArgument(format!("invalid config: {e}")))
    }

    /// Parse config text (JSON or YAML).
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
        let mut config = Config::from_value(value)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
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

#[cfg(test)]
mod tests {
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
        assert!(Config::from_value(serde_json::json!({"load_variables_from": [{"variable_loader_type": "vault"}]})).is_err());
    }
}
