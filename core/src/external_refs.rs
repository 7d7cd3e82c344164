//! Relative-file `$ref`s of an OpenAPI spec (`pet.yaml`, `common.json#/components/schemas/Error`).
//!
//! The files they name are loaded (each under the discovery size cap, and only inside the
//! spec's own directory: a spec found by discovery must not make us read `~/.ssh`), and what
//! they point to is brought into the one document the converter reads, as a bundler does:
//! a schema becomes a named definition of the spec (`#/components/schemas/<name>`, or
//! `#/definitions/<name>` in 2.0) so that recursive schemas stay finite; anything else (a
//! parameter, response, request body, path item) takes the place of its `$ref`. Refs inside
//! a loaded file resolve against that file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// At most this many files per spec.
const MAX_FILES: usize = 64;
/// At most this many non-schema objects put in place of their refs, one inside another
/// (a file whose parameter names the file again would otherwise never end).
const MAX_INLINED: usize = 16;

/// The files a spec reaches through relative `$ref`s, by canonical path.
pub(crate) type Files = HashMap<PathBuf, Value>;

/// Load every file the spec at `spec_path` (canonical) reaches through relative `$ref`s,
/// transitively, each at most `max_size` bytes.
pub(crate) fn load_files(doc: &Value, spec_path: &Path, max_size: u64) -> Result<Files> {
    let root = spec_path.parent().unwrap_or(Path::new("/"));
    let mut files = Files::new();
    let mut queue = vec![(spec_path.to_path_buf(), refs_to_files(doc))];
    while let Some((from, refs)) = queue.pop() {
        for r in refs {
            let path = resolve(root, &from, &r)?;
            if path == spec_path {
                // A file pointing back at the spec: read from a copy while the spec changes.
                files.entry(path).or_insert_with(|| doc.clone());
                continue;
            }
            if files.contains_key(&path) {
                continue;
            }
            if files.len() == MAX_FILES {
                return Err(Error::InvalidManual(format!("the spec's `$ref`s reach more than {MAX_FILES} files")));
            }
            let bytes = crate::files::read_capped(&path, max_size)
                .map_err(|e| Error::InvalidManual(format!("`$ref` '{r}' (in {}): {e}", from.display())))?;
            let value = crate::parse::parse_document(&bytes, Some(&path))
                .map_err(|e| Error::InvalidManual(format!("`$ref` '{r}': {}: {e}", path.display())))?;
            queue.push((path.clone(), refs_to_files(&value)));
            files.insert(path, value);
        }
    }
    Ok(files)
}

/// Bring the external refs of `doc` (the spec at canonical `spec_path`) into it, from
/// `files` ([`load_files`]); `swagger2` says where its definitions live.
pub(crate) fn bundle(doc: &mut Value, swagger2: bool, spec_path: &Path, files: &Files) -> Result<()> {
    let container = if swagger2 { "/definitions" } else { "/components/schemas" };
    let taken =
        doc.pointer(container).and_then(Value::as_object).map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let root = spec_path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut bundler =
        Bundler { main: spec_path, root, files, container, names: HashMap::new(), taken, imported: Vec::new() };
    let Value::Object(top) = doc else { return Ok(()) };
    for (key, value) in top.iter_mut() {
        match key.as_str() {
            "definitions" if swagger2 => bundler.walk_members(value, spec_path)?,
            "components" => {
                for (kind, members) in value.as_object_mut().into_iter().flatten() {
                    match kind.as_str() {
                        "schemas" if !swagger2 => bundler.walk_members(members, spec_path)?,
                        _ => bundler.walk(members, spec_path, false, 0)?,
                    }
                }
            }
            _ => bundler.walk(value, spec_path, false, 0)?,
        }
    }
    let imported = std::mem::take(&mut bundler.imported);
    if imported.is_empty() {
        return Ok(());
    }
    let mut at = &mut *doc;
    for part in container.split('/').skip(1) {
        if !at.get(part).is_some_and(Value::is_object) {
            at[part] = Value::Object(Map::new());
        }
        at = &mut at[part];
    }
    if let Value::Object(defs) = at {
        defs.extend(imported);
    }
    Ok(())
}

struct Bundler<'f> {
    main: &'f Path,
    root: PathBuf,
    files: &'f Files,
    /// JSON pointer of the spec's schema definitions.
    container: &'static str,
    /// (file, pointer) → the definition name it was imported as.
    names: HashMap<(PathBuf, String), String>,
    /// Definition names in use.
    taken: HashSet<String>,
    imported: Vec<(String, Value)>,
}

impl Bundler<'_> {
    /// Each member of a container of schemas is a schema.
    fn walk_members(&mut self, container: &mut Value, doc: &Path) -> Result<()> {
        match container {
            Value::Object(members) => members.values_mut().try_for_each(|m| self.walk(m, doc, true, 0)),
            other => self.walk(other, doc, false, 0),
        }
    }

    /// Bring in what the refs of `v` (part of the document `doc`) name from other files.
    /// `inlined`: how many objects taken from files this one sits inside.
    fn walk(&mut self, v: &mut Value, doc: &Path, in_schema: bool, inlined: usize) -> Result<()> {
        if let Some(r) = v.get("$ref").and_then(Value::as_str).map(str::to_string) {
            let (file, pointer) = r.split_once('#').unwrap_or((&r, ""));
            if !(file.is_empty() && doc == self.main) {
                let target = if file.is_empty() { doc.to_path_buf() } else { resolve(&self.root, doc, file)? };
                if in_schema {
                    v["$ref"] = Value::String(self.import_schema(&target, pointer, &r)?);
                } else {
                    if inlined == MAX_INLINED {
                        return Err(Error::InvalidManual(format!(
                            "`$ref` '{r}': more than {MAX_INLINED} objects from files inside one another"
                        )));
                    }
                    let mut found = self.target(&target, pointer, &r)?.clone();
                    self.walk(&mut found, &target, false, inlined + 1)?;
                    *v = found;
                    return Ok(());
                }
            }
        }
        match v {
            Value::Object(members) => {
                for (key, child) in members.iter_mut().filter(|(k, _)| *k != "$ref") {
                    self.walk(child, doc, in_schema || key == "schema", inlined)?;
                }
            }
            Value::Array(items) => items.iter_mut().try_for_each(|item| self.walk(item, doc, in_schema, inlined))?,
            _ => {}
        }
        Ok(())
    }

    /// The local ref that now stands for the schema at `pointer` in `file`.
    fn import_schema(&mut self, file: &Path, pointer: &str, r: &str) -> Result<String> {
        let container = self.container;
        let local = |name: &str| format!("#{container}/{name}");
        if file == self.main {
            // A file pointing back at one of the spec's own definitions.
            if let Some(name) = pointer.strip_prefix(self.container).and_then(|p| p.strip_prefix('/')) {
                if !name.contains('/') {
                    return Ok(format!("#{pointer}"));
                }
            }
        }
        let key = (file.to_path_buf(), pointer.to_string());
        if let Some(name) = self.names.get(&key) {
            return Ok(local(name));
        }
        let name = self.fresh_name(file, pointer);
        self.names.insert(key, name.clone());
        let mut schema = self.target(file, pointer, r)?.clone();
        self.walk(&mut schema, file, true, 0)?;
        self.imported.push((name.clone(), schema));
        Ok(local(&name))
    }

    /// A definition name from the pointer's last segment, else the file's stem; made
    /// safe to write in a JSON pointer, and unique.
    fn fresh_name(&mut self, file: &Path, pointer: &str) -> String {
        let last =
            pointer.rsplit('/').next().filter(|s| !s.is_empty()).map(|s| s.replace("~1", "/").replace("~0", "~"));
        let stem = || file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let base: String = last
            .unwrap_or_else(stem)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
            .collect();
        let base = if base.is_empty() { "schema".to_string() } else { base };
        let mut name = base.clone();
        let mut n = 1;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.taken.insert(name.clone());
        name
    }

    fn target(&self, file: &Path, pointer: &str, r: &str) -> Result<&Value> {
        let doc = self
            .files
            .get(file)
            .ok_or_else(|| Error::InvalidManual(format!("`$ref` '{r}': {} was not loaded", file.display())))?;
        doc.pointer(pointer)
            .ok_or_else(|| Error::InvalidManual(format!("`$ref` '{r}': nothing at '#{pointer}' in {}", file.display())))
    }
}

/// The canonical path of the file a ref's file part names, relative to the document
/// `from`; it must lie inside `root` (the spec's directory).
fn resolve(root: &Path, from: &Path, file: &str) -> Result<PathBuf> {
    let refused = |why: &str| Error::InvalidManual(format!("`$ref` '{file}' (in {}): {why}", from.display()));
    if file.contains("://") || file.starts_with('/') || file.starts_with('\\') {
        return Err(refused("only relative file refs are followed"));
    }
    let decoded = percent_encoding::percent_decode_str(file).decode_utf8().map_err(|_| refused("not UTF-8"))?;
    let joined = from.parent().unwrap_or(Path::new("/")).join(decoded.as_ref());
    let path = joined.canonicalize().map_err(|e| refused(&format!("{}: {e}", joined.display())))?;
    if !path.starts_with(root) {
        return Err(refused(&format!("{} is outside the spec's directory {}", path.display(), root.display())));
    }
    Ok(path)
}

/// The file parts of the refs of `v` that name another document.
fn refs_to_files(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for_each_ref(v, &mut |r| {
        let file = r.split_once('#').map_or(r, |(f, _)| f);
        if !file.is_empty() && !out.iter().any(|o| o == file) {
            out.push(file.to_string());
        }
    });
    out
}

fn for_each_ref(v: &Value, f: &mut impl FnMut(&str)) {
    match v {
        Value::Object(members) => {
            if let Some(Value::String(r)) = members.get("$ref") {
                f(r);
            }
            members.values().for_each(|child| for_each_ref(child, f));
        }
        Value::Array(items) => items.iter().for_each(|item| for_each_ref(item, f)),
        _ => {}
    }
}
