//! Bounded parsing of JSON and YAML documents (manuals, specs, configs, workflows).
//!
//! JSON nesting is bounded by serde_json's recursion limit (128); YAML nesting by
//! serde_yaml_ng's recursion limit, and alias expansion ("billion laughs") by its
//! repetition limit. Both give errors, never unbounded memory or stack.

use std::path::Path;

use serde_json::Value;

/// Which syntax a document is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

/// Guess the syntax from the file extension, else from the first non-blank byte.
pub fn syntax_of(bytes: &[u8], path: Option<&Path>) -> Syntax {
    let ext = path.and_then(|p| p.extension()).and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => Syntax::Json,
        Some("yaml" | "yml") => Syntax::Yaml,
        _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => Syntax::Json,
            _ => Syntax::Yaml,
        },
    }
}

/// Parse a JSON or YAML document into a JSON value.
pub fn parse_document(bytes: &[u8], path: Option<&Path>) -> Result<Value, String> {
    match syntax_of(bytes, path) {
        Syntax::Json => serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}")),
        Syntax::Yaml => {
            let text = std::str::from_utf8(bytes).map_err(|e| format!("invalid YAML: not UTF-8 ({e})"))?;
            serde_yaml_ng::from_str::<Value>(text).map_err(|e| format!("invalid YAML: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for n in names {
            doc.push_str(&format!("{n}: &{n} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
            prev = n;
        }
        let err = parse_document(doc.as_bytes(), Some(Path::new("x.yaml"))).unwrap_err();
        assert!(err.contains("YAML"), "{err}");
    }

    #[test]
    fn deep_json_is_refused() {
        let doc = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = parse_document(doc.as_bytes(), None).unwrap_err();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn deep_yaml_is_refused() {
        let doc = "[".repeat(100_000) + &"]".repeat(100_000);
        let err = parse_document(doc.as_bytes(), Some(Path::new("x.yaml"))).unwrap_err();
        assert!(err.contains("YAML"), "{err}");
    }

    #[test]
    fn sniffs_syntax() {
        assert_eq!(syntax_of(b"  {\"a\":1}", None), Syntax::Json);
        assert_eq!(syntax_of(b"a: 1", None), Syntax::Yaml);
        assert_eq!(syntax_of(b"{}", Some(Path::new("m.yml"))), Syntax::Yaml);
    }
}
