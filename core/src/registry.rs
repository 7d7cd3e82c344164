//! The tool registry: manuals and their tools, with the search index.
//!
//! The catalogue is an immutable snapshot behind an `ArcSwap`. Readers load the
//! current snapshot without locking or copying; a registration builds the new
//! manual's entry (tools + search segment) outside any lock, then swaps in a new
//! catalogue that shares every other manual's entry. Registration is atomic: a
//! manual's tools appear all together or not at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::manual::{Manual, SharedDefs, Tool};
use crate::search::{self, Segment};

/// A tool as registered: its full name (`manual.tool`) and its manual.
#[derive(Debug)]
pub struct RegisteredTool {
    /// `manual.tool`.
    pub name: String,
    pub manual: String,
    pub tool: Tool,
    /// The manual's shared schema definitions, when its schemas use `#/$defs/` refs.
    pub shared_defs: Option<Arc<SharedDefs>>,
    /// The compiled `inputs` validator, built on the first call (the engine owns its use).
    pub(crate) validator: OnceLock<std::result::Result<Arc<jsonschema::Validator>, String>>,
    /// Whether the call template holds no `$` at all (so variable substitution can be
    /// skipped on every call), found on the first call.
    pub(crate) template_is_literal: OnceLock<bool>,
    /// The URL its manual was fetched from, when that origin bounds where the tool's
    /// calls may go ([`Manual::fetched_from`]).
    pub fetched_from: Option<Arc<str>>,
}

impl RegisteredTool {
    /// A tool outside any catalogue, as `manual.tool`: for a call the engine makes
    /// itself (a python-utcp manual call template run to fetch its manual).
    pub fn detached(manual: &str, tool: Tool) -> RegisteredTool {
        RegisteredTool {
            name: format!("{manual}.{}", tool.name),
            manual: manual.to_string(),
            tool,
            shared_defs: None,
            validator: OnceLock::new(),
            template_is_literal: OnceLock::new(),
            fetched_from: None,
        }
    }

    /// The tool as UTCP JSON, with `name` set to the full registered name and its
    /// schemas carrying the shared definitions they reference as `$defs`.
    pub fn to_value(&self) -> Value {
        let mut v = serde_json::to_value(&self.tool).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("name".into(), Value::String(self.name.clone()));
            if let Some(defs) = &self.shared_defs {
                obj.insert("inputs".into(), defs.attach(&self.tool.inputs));
                obj.insert("outputs".into(), defs.attach(&self.tool.outputs));
            }
        }
        v
    }

    /// The tool's name inside its manual (`tool` of `manual.tool`): the rule "action".
    pub fn action(&self) -> &str {
        &self.tool.name
    }
}

/// A registered manual.
#[derive(Debug)]
pub struct ManualEntry {
    pub name: String,
    pub utcp_version: String,
    pub manual_version: String,
    /// In manual order.
    pub tools: Vec<Arc<RegisteredTool>>,
    by_name: HashMap<String, usize>,
    segment: Segment,
}

impl ManualEntry {
    fn build(name: &str, manual: Manual) -> Result<ManualEntry> {
        let mut tools = Vec::with_capacity(manual.tools.len());
        let mut by_name = HashMap::with_capacity(manual.tools.len());
        let shared_defs = manual.shared_defs;
        let fetched_from: Option<Arc<str>> = manual.fetched_from.map(Arc::from);
        let prefix = format!("{name}.");
        for mut tool in manual.tools {
            // python-utcp writes tools back already prefixed; never double the prefix.
            if let Some(rest) = tool.name.strip_prefix(&prefix) {
                tool.name = rest.to_string();
            }
            if tool.name.is_empty() {
                return Err(Error::InvalidManual(format!("manual '{name}': a tool has an empty name")));
            }
            if by_name.insert(tool.name.clone(), tools.len()).is_some() {
                return Err(Error::InvalidManual(format!(
                    "manual '{name}': tool name '{}' appears more than once",
                    tool.name
                )));
            }
            tools.push(Arc::new(RegisteredTool {
                name: format!("{name}.{}", tool.name),
                manual: name.into(),
                tool,
                shared_defs: shared_defs.clone(),
                validator: OnceLock::new(),
                template_is_literal: OnceLock::new(),
                fetched_from: fetched_from.clone(),
            }));
        }
        let segment = Segment::build(name, tools.iter().map(|t| &t.tool));
        Ok(ManualEntry {
            name: name.to_string(),
            utcp_version: manual.utcp_version,
            manual_version: manual.manual_version,
            tools,
            by_name,
            segment,
        })
    }

    pub fn tool(&self, name: &str) -> Option<&Arc<RegisteredTool>> {
        self.by_name.get(name).map(|&i| &self.tools[i])
    }
}

/// An immutable view of everything registered at one moment.
#[derive(Debug, Default)]
pub struct Catalogue {
    manuals: BTreeMap<String, Arc<ManualEntry>>,
}

impl Catalogue {
    pub fn manual(&self, name: &str) -> Option<&Arc<ManualEntry>> {
        self.manuals.get(name)
    }

    pub fn manuals(&self) -> impl Iterator<Item = &Arc<ManualEntry>> {
        self.manuals.values()
    }

    /// Look a tool up by its full name. The manual is the part before the first
    /// dot; the rest (which may hold dots, as MCP's `manual.server.tool`) is the tool.
    pub fn tool(&self, full_name: &str) -> Option<&Arc<RegisteredTool>> {
        let (manual, tool) = full_name.split_once('.')?;
        self.manuals.get(manual)?.tool(tool)
    }

    pub fn tool_count(&self) -> usize {
        self.manuals.values().map(|m| m.tools.len()).sum()
    }

    /// Ranked search. `limit == 0` means no limit. With `tags`, only tools carrying
    /// at least one of them (case-insensitive) are returned. An empty query lists
    /// the (tag-filtered) tools by name.
    pub fn search(&self, query: &str, limit: usize, tags: &[String]) -> Vec<(Arc<RegisteredTool>, f32)> {
        let entries: Vec<&Arc<ManualEntry>> = self.manuals.values().collect();
        let wanted: Vec<String> = tags.iter().map(|t| t.to_lowercase()).collect();
        let tag_ok = |t: &RegisteredTool| {
            wanted.is_empty() || t.tool.tags.iter().any(|tag| wanted.iter().any(|w| tag.eq_ignore_ascii_case(w)))
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        if search::tokens(query).is_empty() {
            let mut all: Vec<_> =
                entries.iter().flat_map(|m| m.tools.iter()).filter(|t| tag_ok(t)).map(|t| (t.clone(), 0.0)).collect();
            all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            all.truncate(limit);
            return all;
        }
        let segments: Vec<&Segment> = entries.iter().map(|m| &m.segment).collect();
        let mut hits: Vec<(&Arc<RegisteredTool>, f32)> = search::score(&segments, query)
            .into_iter()
            .map(|(seg, doc, score)| (&entries[seg].tools[doc as usize], score))
            .filter(|(t, _)| tag_ok(t))
            .collect();
        let by_rank = |a: &(&Arc<RegisteredTool>, f32), b: &(&Arc<RegisteredTool>, f32)| {
            b.1.total_cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name))
        };
        if hits.len() > limit {
            hits.select_nth_unstable_by(limit - 1, by_rank);
            hits.truncate(limit);
        }
        hits.sort_unstable_by(by_rank);
        hits.into_iter().map(|(t, s)| (t.clone(), s)).collect()
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<Catalogue>,
    /// Serialises writers only; readers never take it.
    writer: Mutex<()>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The current catalogue. Cheap: an atomic load and a reference count.
    pub fn snapshot(&self) -> Arc<Catalogue> {
        self.current.load_full()
    }

    /// Register `manual` under `name` (already sanitized). All tools or none.
    pub fn register(&self, name: &str, manual: Manual) -> Result<Arc<ManualEntry>> {
        if self.current.load().manuals.contains_key(name) {
            return Err(already_registered(name));
        }
        // Build outside the writer lock: indexing a large manual must not stall other writers.
        let entry = Arc::new(ManualEntry::build(name, manual)?);
        let _guard = self.writer.lock();
        let current = self.current.load();
        if current.manuals.contains_key(name) {
            return Err(already_registered(name));
        }
        let mut manuals = current.manuals.clone();
        manuals.insert(name.to_string(), entry.clone());
        self.current.store(Arc::new(Catalogue { manuals }));
        Ok(entry)
    }

    /// Replace the tools of manual `name` in one step (a tool server said its tools
    /// changed). `NOT_FOUND` when the manual was removed meanwhile.
    pub fn replace(&self, name: &str, manual: Manual) -> Result<Arc<ManualEntry>> {
        let entry = Arc::new(ManualEntry::build(name, manual)?);
        let _guard = self.writer.lock();
        let current = self.current.load();
        if !current.manuals.contains_key(name) {
            return Err(Error::NotFound(format!("manual '{name}' is not registered")));
        }
        let mut manuals = current.manuals.clone();
        manuals.insert(name.to_string(), entry.clone());
        self.current.store(Arc::new(Catalogue { manuals }));
        Ok(entry)
    }

    /// Add one tool to manual `name`, creating the manual when it is missing (native
    /// tools registered one by one). A tool of that name already there is `ALREADY_EXISTS`.
    pub fn add_tool(&self, name: &str, tool: Tool) -> Result<Arc<RegisteredTool>> {
        let _guard = self.writer.lock();
        let current = self.current.load();
        let mut manual = Manual::empty();
        if let Some(existing) = current.manuals.get(name) {
            if existing.tool(&tool.name).is_some() {
                return Err(Error::AlreadyExists(format!("manual '{name}' already has a tool '{}'", tool.name)));
            }
            manual.utcp_version = existing.utcp_version.clone();
            manual.manual_version = existing.manual_version.clone();
            manual.shared_defs = existing.tools.first().and_then(|t| t.shared_defs.clone());
            manual.fetched_from = existing.tools.first().and_then(|t| t.fetched_from.as_deref().map(str::to_string));
            manual.tools = existing.tools.iter().map(|t| t.tool.clone()).collect();
        }
        let tool_name = tool.name.clone();
        manual.tools.push(tool);
        let entry = Arc::new(ManualEntry::build(name, manual)?);
        let added = entry
            .tool(&tool_name)
            .cloned()
            .ok_or_else(|| Error::Internal(format!("tool '{tool_name}' missing after registration")))?;
        let mut manuals = current.manuals.clone();
        manuals.insert(name.to_string(), entry);
        self.current.store(Arc::new(Catalogue { manuals }));
        Ok(added)
    }

    /// Remove a manual and its tools. Returns false when no such manual was registered.
    pub fn deregister(&self, name: &str) -> bool {
        let _guard = self.writer.lock();
        let current = self.current.load();
        if !current.manuals.contains_key(name) {
            return false;
        }
        let mut manuals = current.manuals.clone();
        manuals.remove(name);
        self.current.store(Arc::new(Catalogue { manuals }));
        true
    }

    /// Every tool, ordered by full name.
    pub fn tools(&self) -> Vec<Arc<RegisteredTool>> {
        let cat = self.current.load();
        let mut all: Vec<_> = cat.manuals.values().flat_map(|m| m.tools.iter().cloned()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn tool(&self, full_name: &str) -> Option<Arc<RegisteredTool>> {
        self.current.load().tool(full_name).cloned()
    }

    /// Ranked search over the current catalogue ([`Catalogue::search`]).
    pub fn search(&self, query: &str, limit: usize, tags: &[String]) -> Vec<(Arc<RegisteredTool>, f32)> {
        self.current.load().search(query, limit, tags)
    }
}

fn already_registered(name: &str) -> Error {
    Error::AlreadyExists(format!(
        "a manual named '{name}' is already registered; deregister it first or pick another name"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manual(tools: &[(&str, &str, &[&str])]) -> Manual {
        let tools: Vec<Value> = tools
            .iter()
            .map(|(name, desc, tags)| {
                json!({"name": name, "description": desc, "tags": tags,
                       "tool_call_template": {"call_template_type": "native"}})
            })
            .collect();
        Manual::from_value(json!({"tools": tools})).unwrap()
    }

    #[test]
    fn register_lookup_deregister() {
        let r = Registry::new();
        r.register("weather", manual(&[("get", "current weather", &["weather"]), ("forecast", "", &[])])).unwrap();
        assert_eq!(r.tool("weather.get").unwrap().action(), "get");
        assert!(r.tool("weather.nope").is_none());
        assert!(r.tool("nodot").is_none());
        let names: Vec<_> = r.tools().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["weather.forecast", "weather.get"]);
        let err = r.register("weather", manual(&[("x", "", &[])])).unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::AlreadyExists);
        assert!(r.deregister("weather"));
        assert!(!r.deregister("weather"));
        assert!(r.tools().is_empty());
    }

    #[test]
    fn registration_is_all_or_nothing() {
        let r = Registry::new();
        let err = r.register("dup", manual(&[("a", "", &[]), ("a", "", &[])])).unwrap_err();
        assert!(err.to_string().contains("more than once"));
        assert!(r.snapshot().manual("dup").is_none());
        assert!(r.tools().is_empty());
    }

    #[test]
    fn prefixed_tool_names_are_not_doubled() {
        let r = Registry::new();
        r.register("m", manual(&[("m.t", "", &[])])).unwrap();
        assert!(r.tool("m.t").is_some());
    }

    #[test]
    fn snapshots_are_stable_during_registration() {
        let r = Registry::new();
        r.register("a", manual(&[("x", "", &[])])).unwrap();
        let before = r.snapshot();
        r.register("b", manual(&[("y", "", &[])])).unwrap();
        assert_eq!(before.tool_count(), 1);
        assert_eq!(r.snapshot().tool_count(), 2);
    }

    #[test]
    fn search_ranks_filters_and_limits() {
        let r = Registry::new();
        r.register(
            "shop",
            manual(&[
                ("getInventory", "Stock count for a SKU", &["inventory"]),
                ("setInventory", "Set the stock count for a SKU", &["inventory", "write"]),
                ("listOrders", "List recent orders", &["orders"]),
            ]),
        )
        .unwrap();
        let hits = r.search("get inventory", 10, &[]);
        assert_eq!(hits[0].0.name, "shop.getInventory");
        let hits = r.search("stock", 10, &["write".into()]);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0.name, "shop.setInventory");
        assert_eq!(r.search("", 0, &[]).len(), 3);
        assert_eq!(r.search("", 2, &[]).len(), 2);
        assert_eq!(r.search("inventory", 1, &[]).len(), 1);
        assert!(r.search("zebra", 10, &[]).is_empty());
    }

    #[test]
    fn concurrent_readers_and_writers() {
        let r = Arc::new(Registry::new());
        let mut handles = Vec::new();
        for i in 0..4 {
            let r = r.clone();
            handles.push(std::thread::spawn(move || {
                for j in 0..50 {
                    r.register(&format!("m{i}_{j}"), manual(&[("t", "tool", &[])])).unwrap();
                    let n = r.snapshot().tool_count();
                    assert!(n > j);
                    let _ = r.search("tool", 5, &[]);
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(r.tools().len(), 200);
    }
}
