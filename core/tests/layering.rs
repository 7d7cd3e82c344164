//! The module layering of `core/src` (docs/architecture.md, "Layers"), checked from
//! the source text:
//! - only `engine/` and `lib.rs` name `Engine` (no `impl Engine`, no import of it);
//! - no module imports from a layer above its own;
//! - the top-level modules import each other without a cycle, and so do the files of
//!   one subsystem (a parent and its own submodules excepted).
//!
//! Paths are read from `crate::…`, `super::…` and `self::…` references, `use` groups
//! included, after comments are removed. A new top-level module must be given a layer
//! in [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom up; a module may import from its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    ("errors, JSON helpers and bounded reading", &["error", "json", "parse", "files"]),
    ("data model and configuration", &["manual", "vars", "config"]),
    ("OpenAPI conversion", &["external_refs", "openapi"]),
    ("discovery", &["discovery"]),
    ("catalogue", &["search", "registry", "schema"]),
    ("subsystems", &["transport", "domain", "events", "store"]),
    // Which tools of a manual fetched from a URL are kept: needs `transport::net`'s address classes.
    ("manual admission", &["admission"]),
    ("workflows and planning", &["workflow", "planner"]),
    ("facade", &["engine"]),
    // `utp_core::host` parses what the bindings pass into the facade's option types.
    ("host options", &["host"]),
    ("crate root", &["lib"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// One source file: its module path (`["engine", "calls"]`; `[]` for lib.rs) and its text without comments.
struct SourceFile {
    path: PathBuf,
    module: Vec<String>,
    code: String,
}

impl SourceFile {
    fn top(&self) -> &str {
        self.module.first().map_or("lib", String::as_str)
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read_sources() -> Vec<SourceFile> {
    let root = src_dir();
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("core/src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).expect("under core/src");
                let mut module: Vec<String> =
                    rel.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                    module.pop();
                }
                let text = std::fs::read_to_string(&path).expect("a readable source file");
                files.push(SourceFile { path: rel.to_path_buf(), module, code: strip_comments(&text) });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The text with `//` and `/* */` comments blanked out (string literals kept).
fn strip_comments(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if in_string {
            if c == b'\\' && i + 1 < bytes.len() {
                out.push_str(&text[i..i + 2]);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_string = false;
            }
        } else if c == b'r' && (i == 0 || !is_ident(bytes[i - 1] as char)) && raw_string_end(text, i).is_some() {
            // A raw string: copied whole, its quotes do not count.
            let end = raw_string_end(text, i).expect("checked");
            out.push_str(&text[i..end]);
            i = end;
            continue;
        } else if c == b'"' {
            // A char literal `'"'` is not a string's start.
            in_string = !(i > 0 && bytes[i - 1] == b'\'' && bytes.get(i + 1) == Some(&b'\''));
        } else if text[i..].starts_with("//") {
            let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
            i = end;
            continue;
        } else if text[i..].starts_with("/*") {
            let end = text[i + 2..].find("*/").map_or(text.len(), |n| i + 2 + n + 2);
            out.extend(text[i..end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
            i = end;
            continue;
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The end of the raw string (`r"…"`, `r#"…"#`) starting at `at`, if one starts there.
fn raw_string_end(text: &str, at: usize) -> Option<usize> {
    let rest = &text[at + 1..];
    let hashes = rest.len() - rest.trim_start_matches('#').len();
    if !rest[hashes..].starts_with('"') {
        return None;
    }
    let close = format!("\"{}", "#".repeat(hashes));
    let body = at + 1 + hashes + 1;
    text[body..].find(&close).map(|n| body + n + close.len())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts with `crate`, `super` or `self` followed by `::`, `use`
/// groups expanded: `crate::a::{b, c::d}` gives `[crate, a, b]` and `[crate, a, c, d]`.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        if starts_word {
            for head in ["crate", "super", "self"] {
                let len = head.len();
                let matches = chars[i..].iter().take(len).copied().eq(head.chars());
                let followed = chars.get(i + len) == Some(&':') && chars.get(i + len + 1) == Some(&':');
                if matches && followed {
                    let mut end = i;
                    tree(&chars, &mut end, Vec::new(), &mut out);
                    i = end.max(i + 1);
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Parse one use-tree at `*pos` (a path, possibly ending in `{...}` or `*`).
fn tree(chars: &[char], pos: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        while chars.get(*pos).is_some_and(|c| c.is_whitespace()) {
            *pos += 1;
        }
        match chars.get(*pos) {
            Some('{') => {
                *pos += 1;
                loop {
                    while chars.get(*pos).is_some_and(|c| c.is_whitespace() || *c == ',') {
                        *pos += 1;
                    }
                    match chars.get(*pos) {
                        None => return,
                        Some('}') => {
                            *pos += 1;
                            return;
                        }
                        _ => {
                            let before = *pos;
                            tree(chars, pos, prefix.clone(), out);
                            if *pos == before {
                                *pos += 1; // something this parser does not know: skip it
                            }
                        }
                    }
                }
            }
            Some('*') => {
                *pos += 1;
                out.push(prefix);
                return;
            }
            Some(c) if is_ident(*c) => {
                let start = *pos;
                while chars.get(*pos).is_some_and(|c| is_ident(*c)) {
                    *pos += 1;
                }
                prefix.push(chars[start..*pos].iter().collect());
                if chars.get(*pos) == Some(&':') && chars.get(*pos + 1) == Some(&':') {
                    *pos += 2;
                    continue;
                }
                out.push(prefix);
                skip_alias(chars, pos);
                return;
            }
            _ => {
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return;
            }
        }
    }
}

/// Step over ` as name` after a path: the alias is not part of it.
fn skip_alias(chars: &[char], pos: &mut usize) {
    let mut at = *pos;
    while chars.get(at).is_some_and(|c| c.is_whitespace()) {
        at += 1;
    }
    let is_as = chars.get(at) == Some(&'a')
        && chars.get(at + 1) == Some(&'s')
        && chars.get(at + 2).is_some_and(|c| c.is_whitespace());
    if !is_as {
        return;
    }
    at += 2;
    while chars.get(at).is_some_and(|c| c.is_whitespace()) {
        at += 1;
    }
    while chars.get(at).is_some_and(|c| is_ident(*c)) {
        at += 1;
    }
    *pos = at;
}

/// The crate-root re-exports of lib.rs: name → the module it comes from.
fn root_reexports(lib: &SourceFile) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib.code.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        for item in items.trim_matches(|c| c == '{' || c == '}' || char::is_whitespace(c)).split(',') {
            let name = item.trim().rsplit("::").next().unwrap_or_default().trim();
            if !name.is_empty() {
                names.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    names
}

/// Where `path` (as written in `file`) points: the full module path from the crate root.
fn resolve(file: &SourceFile, path: &[String]) -> Vec<String> {
    let mut base: Vec<String> = Vec::new();
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => rest = &path[1..],
        Some("self") => {
            base = file.module.clone();
            rest = &path[1..];
        }
        Some("super") => {
            base = file.module.clone();
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().cloned());
    base
}

/// The top-level module a resolved path lands in, if it is one of ours.
fn target_top(full: &[String], tops: &BTreeSet<String>, reexports: &BTreeMap<String, String>) -> Option<String> {
    let first = full.first()?;
    if tops.contains(first) {
        return Some(first.clone());
    }
    reexports.get(first).cloned()
}

/// `impl Engine`, `impl crate::engine::Engine`, `impl<...> … Engine` and the like.
fn impls_engine(code: &str) -> bool {
    code.match_indices("impl").any(|(at, _)| {
        let before_ok = code[..at].chars().next_back().is_none_or(|c| !is_ident(c));
        let after = &code[at + 4..];
        let after_ok = after.chars().next().is_some_and(|c| c.is_whitespace() || c == '<');
        if !(before_ok && after_ok) {
            return false;
        }
        let head = after.split(['{', ';']).next().unwrap_or_default();
        head.split(|c: char| !is_ident(c)).any(|word| word == "Engine") && !head.contains("base64::Engine")
    })
}

struct Graph {
    files: Vec<SourceFile>,
    reexports: BTreeMap<String, String>,
    tops: BTreeSet<String>,
}

impl Graph {
    fn load() -> Graph {
        let files = read_sources();
        let lib = files.iter().find(|f| f.module.is_empty()).expect("core/src/lib.rs");
        let reexports = root_reexports(lib);
        let tops = files.iter().filter_map(|f| f.module.first().cloned()).collect();
        Graph { files, reexports, tops }
    }

    /// `(file, resolved path)` for every path each file names.
    fn references(&self) -> Vec<(&SourceFile, Vec<String>)> {
        let mut refs = Vec::new();
        for file in &self.files {
            for path in paths(&file.code) {
                refs.push((file, resolve(file, &path)));
            }
        }
        refs
    }
}

#[test]
fn only_the_engine_names_engine() {
    let graph = Graph::load();
    let mut found = Vec::new();
    for file in graph.files.iter().filter(|f| !matches!(f.top(), "engine" | "lib")) {
        if impls_engine(&file.code) {
            found.push(format!("{}: `impl Engine`", file.name()));
        }
        for path in paths(&file.code) {
            let full = resolve(file, &path);
            let engine_item = full.last().is_some_and(|last| last == "Engine")
                && target_top(&full, &graph.tops, &graph.reexports).as_deref() == Some("engine");
            if engine_item {
                found.push(format!("{}: `{}`", file.name(), path.join("::")));
            }
        }
    }
    assert!(found.is_empty(), "only engine/ and lib.rs may name `Engine`; found:\n{}", found.join("\n"));
}

#[test]
fn every_top_level_module_has_a_layer() {
    let graph = Graph::load();
    let missing: Vec<&String> = graph.tops.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(missing.is_empty(), "give these modules a layer in LAYERS (and docs/architecture.md): {missing:?}");
}

#[test]
fn no_module_imports_from_a_layer_above() {
    let graph = Graph::load();
    let mut found = BTreeSet::new();
    for (file, full) in graph.references() {
        let Some(target) = target_top(&full, &graph.tops, &graph.reexports) else { continue };
        let (Some(from), Some(to)) = (layer_of(file.top()), layer_of(&target)) else { continue };
        if to > from {
            found.insert(format!(
                "{} ({}) imports `{}` ({})",
                file.name(),
                LAYERS[from].0,
                full.join("::"),
                LAYERS[to].0
            ));
        }
    }
    assert!(found.is_empty(), "imports that run up the layers:\n{}", found.into_iter().collect::<Vec<_>>().join("\n"));
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, node: &'a str) {
        s.index.insert(node, s.next);
        s.low.insert(node, s.next);
        s.next += 1;
        s.stack.push(node);
        s.on_stack.insert(node);
        for next in s.edges.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top.to_string());
                if top == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in edges.keys() {
        if !state.index.contains_key(node.as_str()) {
            visit(&mut state, node);
        }
    }
    state.found
}

#[test]
fn top_level_modules_import_without_cycles() {
    let graph = Graph::load();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, full) in graph.references() {
        let Some(target) = target_top(&full, &graph.tops, &graph.reexports) else { continue };
        if file.top() != target && file.top() != "lib" {
            edges.entry(file.top().to_string()).or_default().insert(target);
        }
    }
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles between top-level modules: {found:?}");
}

#[test]
fn files_of_a_subsystem_import_without_cycles() {
    let graph = Graph::load();
    let modules: BTreeSet<Vec<String>> = graph.files.iter().map(|f| f.module.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, full) in graph.references() {
        // The deepest module of ours the path lands in.
        let Some(target) = (1..=full.len()).rev().map(|n| full[..n].to_vec()).find(|m| modules.contains(m)) else {
            continue;
        };
        let related = target.starts_with(&file.module) || file.module.starts_with(&target);
        if !related {
            edges.entry(file.module.join("::")).or_default().insert(target.join("::"));
        }
    }
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles between files (parents and their submodules aside): {found:?}");
}

#[test]
fn the_path_reader_understands_use_groups() {
    let code = strip_comments(
        "use crate::a::{b, c::{d, e as f}};\n// crate::commented::Out\nlet x = \"crate::in_string\";\nuse super::super::g::*;\nimpl crate::engine::Engine {}",
    );
    let found = paths(&code);
    let want: Vec<Vec<String>> = [
        &["crate", "a", "b"][..],
        &["crate", "a", "c", "d"],
        &["crate", "a", "c", "e"],
        &["crate", "in_string"],
        &["super", "super", "g"],
        &["crate", "engine", "Engine"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(found, want);
    assert!(impls_engine(&code));
    assert!(impls_engine("impl Engine {"));
    assert!(!impls_engine("use base64::Engine as _; impl Foo for Bar {}"));
    let file = SourceFile {
        path: "workflow/runner.rs".into(),
        module: vec!["workflow".into(), "runner".into()],
        code: String::new(),
    };
    assert_eq!(
        resolve(&file, &["super".into(), "super".into(), "engine".into(), "Engine".into()]),
        ["engine", "Engine"]
    );
    assert_eq!(resolve(&file, &["super".into(), "expr".into()]), ["workflow", "expr"]);
}
