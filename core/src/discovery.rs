//! Finding manuals: directory scans, single files and manual URLs.
//!
//! A scan never aborts on one bad file: every candidate gets an outcome
//! (registered, skipped with a reason, failed with an error). Symlinks are followed
//! only while they stay inside the scanned root, loops are reported, and files over
//! `discovery.max_file_size` are skipped before they are read.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::files::{io_error, read_capped, too_large};
use crate::openapi::{self, Spec};
use crate::parse::{self, SpecParts};

/// What one discovery call did, file by file.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryReport {
    pub root: String,
    pub files: Vec<FileReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Registered { manual: String, tools: usize },
    Skipped { reason: String },
    Failed { code: String, error: String },
}

impl DiscoveryReport {
    /// Names of the manuals this call registered, in scan order.
    pub fn registered(&self) -> Vec<String> {
        self.files
            .iter()
            .filter_map(|f| match &f.outcome {
                Outcome::Registered { manual, .. } => Some(manual.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Outcome {
    pub fn failed(e: &Error) -> Outcome {
        Outcome::Failed { code: e.code().as_str().to_string(), error: e.to_string() }
    }
}

/// What a parsed document is.
#[derive(Debug)]
pub enum Document {
    Utcp(Value),
    OpenApi(Spec),
    /// An MCP client's config (`{"mcpServers": {...}}`, as Claude Desktop, Cursor and
    /// VS Code write it): registered as an `mcp` manual of those servers.
    McpServers(Value),
    Other,
}

/// Classify a parsed document by its content.
pub fn classify(value: Value) -> Document {
    classify_parsed(value, SpecParts::default())
}

/// Classify a document parsed by [`parse::parse_spec_document`].
pub fn classify_parsed(value: Value, parts: SpecParts) -> Document {
    match &value {
        _ if openapi::is_openapi(&value) => Document::OpenApi(Spec { doc: value, parts }),
        Value::Object(obj) if obj.get("tools").is_some_and(Value::is_array) => Document::Utcp(value),
        Value::Object(obj) if obj.get("mcpServers").is_some_and(Value::is_object) => Document::McpServers(value),
        _ => Document::Other,
    }
}

/// A file a scan found worth reading.
#[derive(Debug)]
pub struct Candidate {
    pub path: PathBuf,
    /// `*.utcp.json|yaml|yml`: must be a manual. Other `.json`/`.yaml`: sniffed.
    pub explicit_manual: bool,
}

/// The manual name for a discovered file: the file name without `.utcp.json`,
/// `.utcp.yaml`, `.utcp.yml` or its extension, sanitized.
pub fn manual_name_for(path: &Path) -> String {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("manual");
    let lower = file.to_ascii_lowercase();
    let stem = [".utcp.json", ".utcp.yaml", ".utcp.yml", ".json", ".yaml", ".yml"]
        .iter()
        .find(|suffix| lower.ends_with(*suffix))
        .map(|suffix| &file[..file.len() - suffix.len()])
        .unwrap_or(file);
    crate::manual::sanitize_name(stem)
}

fn candidate_kind(path: &Path) -> Option<bool> {
    let lower = path.file_name()?.to_str()?.to_ascii_lowercase();
    if lower.ends_with(".utcp.json") || lower.ends_with(".utcp.yaml") || lower.ends_with(".utcp.yml") {
        Some(true)
    } else if lower.ends_with(".json") || lower.ends_with(".yaml") || lower.ends_with(".yml") {
        Some(false)
    } else {
        None
    }
}

/// Read and classify one file.
pub fn load_document(path: &Path, max_size: u64) -> Result<Document> {
    let bytes = read_capped(path, max_size)?;
    let (value, parts) = parse::parse_spec_document(&bytes, Some(path))
        .map_err(|e| Error::InvalidManual(format!("{}: {e}", path.display())))?;
    match classify_parsed(value, parts) {
        Document::OpenApi(mut spec) if spec.parts.external_refs => {
            spec.bring_in_files(path, max_size).map_err(|e| match e {
                Error::InvalidManual(m) => Error::InvalidManual(format!("{}: {m}", path.display())),
                other => other,
            })?;
            Ok(Document::OpenApi(spec))
        }
        doc => Ok(doc),
    }
}

/// Walk `root` and return the candidate files plus the reports for entries that
/// were passed over (symlinks out of the root, loops, unreadable entries, files
/// over the size cap). Directories named `.*` and `node_modules` are not entered.
pub fn scan(root: &Path, max_size: u64) -> (Vec<Candidate>, Vec<FileReport>) {
    let mut candidates = Vec::new();
    let mut reports = Vec::new();
    let canonical_root = match root.canonicalize() {
        Ok(p) => p,
        Err(e) => {
            reports.push(FileReport { path: root.display().to_string(), outcome: Outcome::failed(&io_error(root, e)) });
            return (candidates, reports);
        }
    };
    let mut walk = walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter();
    while let Some(item) = walk.next() {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                let reason = match e.loop_ancestor() {
                    Some(ancestor) => format!("symlink loop back to {}", ancestor.display()),
                    None => format!("cannot read: {e}"),
                };
                reports.push(FileReport { path, outcome: Outcome::Skipped { reason } });
                continue;
            }
        };
        let path = entry.path();
        let is_dir = entry.file_type().is_dir();
        if entry.depth() > 0 && is_dir {
            let name = entry.file_name().to_string_lossy();
            if name.starts_with('.') || name == "node_modules" {
                walk.skip_current_dir();
                continue;
            }
        }
        if entry.path_is_symlink() {
            let inside = path.canonicalize().map(|p| p.starts_with(&canonical_root)).unwrap_or(false);
            if !inside {
                if is_dir {
                    walk.skip_current_dir();
                }
                if is_dir || candidate_kind(path).is_some() {
                    reports.push(FileReport {
                        path: path.display().to_string(),
                        outcome: Outcome::Skipped { reason: "symlink points outside the scanned root".into() },
                    });
                }
                continue;
            }
        }
        if is_dir {
            continue;
        }
        let Some(explicit_manual) = candidate_kind(path) else { continue };
        match entry.metadata() {
            Ok(meta) if meta.len() > max_size => reports.push(FileReport {
                path: path.display().to_string(),
                outcome: Outcome::Skipped { reason: too_large(meta.len(), max_size) },
            }),
            Ok(_) => candidates.push(Candidate { path: path.to_path_buf(), explicit_manual }),
            Err(e) => reports.push(FileReport {
                path: path.display().to_string(),
                outcome: Outcome::Skipped { reason: format!("cannot read: {e}") },
            }),
        }
    }
    (candidates, reports)
}

/// The outcome for a candidate whose document is not a UTCP manual.
pub fn not_a_manual(candidate: &Candidate, doc: &Document) -> Outcome {
    match (doc, candidate.explicit_manual) {
        (_, true) => Outcome::Failed {
            code: ErrorCode::InvalidManual.as_str().into(),
            error: "not a UTCP manual: expected an object with a `tools` list".into(),
        },
        _ => Outcome::Skipped { reason: "not a UTCP manual or OpenAPI document".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_names_follow_the_file_name() {
        assert_eq!(manual_name_for(Path::new("tools/weather.utcp.json")), "weather");
        assert_eq!(manual_name_for(Path::new("specs/github.yaml")), "github");
        assert_eq!(manual_name_for(Path::new("a/My-Tools.UTCP.YML")), "My_Tools");
        assert_eq!(manual_name_for(Path::new("noext")), "noext");
    }

    #[test]
    fn classifies_by_content() {
        assert!(matches!(classify(serde_json::json!({"openapi": "3.1.0"})), Document::OpenApi(_)));
        assert!(matches!(classify(serde_json::json!({"swagger": "2.0"})), Document::OpenApi(_)));
        // The marker decides, whatever its value (the conversion then names a bad version).
        assert!(matches!(classify(serde_json::json!({"openapi": 3, "tools": []})), Document::OpenApi(_)));
        assert!(matches!(classify(serde_json::json!({"tools": []})), Document::Utcp(_)));
        assert!(matches!(classify(serde_json::json!({"name": "pkg"})), Document::Other));
        assert!(matches!(classify(serde_json::json!([1])), Document::Other));
        let mcp = serde_json::json!({"mcpServers": {"fs": {"command": "npx", "args": ["fs"]}}});
        assert!(matches!(classify(mcp), Document::McpServers(_)));
        assert!(matches!(classify(serde_json::json!({"mcpServers": []})), Document::Other));
    }
}
