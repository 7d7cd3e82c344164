//! OpenAPI 2.0 (Swagger) / 3.0 / 3.1 → UTCP manual with `http` call templates.
//!
//! One tool per operation. Schemas referenced by `$ref` are rewritten to
//! `#/$defs/<name>` and held once per manual (`Manual::shared_defs`); a tool's
//! schema gets the closure it reaches only when the tool is serialized. Inlining
//! per operation explodes on large specs (Graph's schemas reach one another) and
//! loops on recursive schemas. Auth is one variable set per security
//! scheme, named after the scheme, not one per operation.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::manual::{
    Auth, CallTemplate, HttpTemplate, Manual, RequestFields, SharedDefs, TemplateCommon, Tool, UTCP_VERSION,
    rewrite_refs,
};
use crate::parse::{OPENAPI_MARKERS, SpecParts};

mod examples;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// Conversion inputs beyond the document itself.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Overrides the spec's servers / host+basePath.
    pub base_url: Option<String>,
    /// Where the spec was fetched from: relative server URLs resolve against it.
    pub spec_url: Option<String>,
}

/// Is this document an OpenAPI description? The one rule, for files, URLs and inline
/// documents alike: an object with an `openapi` (3.x) or `swagger` (2.0) member,
/// whatever its value, so an unsupported version is a conversion error that names it
/// rather than "not a manual". [`crate::parse`] sniffs for the same members.
pub fn is_openapi(doc: &Value) -> bool {
    doc.as_object().is_some_and(|members| OPENAPI_MARKERS.iter().any(|m| members.contains_key(*m)))
}

/// Swagger 2.0 (`swagger: "2..."`) rather than OpenAPI 3.x (`openapi: "3..."`); any
/// other version is an error that names it.
pub(crate) fn is_swagger2(doc: &Value) -> Result<bool> {
    match (doc.get("swagger"), doc.get("openapi")) {
        (Some(Value::String(v)), _) if v.starts_with('2') => Ok(true),
        (_, Some(Value::String(v))) if v.starts_with('3') => Ok(false),
        (Some(v), _) | (_, Some(v)) => {
            Err(Error::InvalidManual(format!("unsupported OpenAPI version {v} (expected 2.0, 3.0 or 3.1)")))
        }
        _ => Err(Error::InvalidManual("not an OpenAPI document: no `openapi` or `swagger` version".into())),
    }
}

/// A spec to convert: the document, and its schema definitions when the parser held
/// them back as raw JSON text ([`crate::parse::parse_spec_document`]).
#[derive(Debug, Default)]
pub struct Spec {
    pub doc: Value,
    pub parts: SpecParts,
}

impl From<Value> for Spec {
    fn from(doc: Value) -> Spec {
        Spec { doc, parts: SpecParts::default() }
    }
}

impl Spec {
    /// Resolve relative-file `$ref`s against the spec's file `path` ([`crate::external_refs`]).
    /// The held-back definitions are built first: refs in them are rewritten too.
    pub(crate) fn bring_in_files(&mut self, path: &std::path::Path, max_size: u64) -> Result<()> {
        let held_back =
            [("definitions", self.parts.definitions.take()), ("schemas", self.parts.component_schemas.take())];
        for (key, members) in held_back {
            let Some(members) = members else { continue };
            let mut built = Map::with_capacity(members.len());
            for (name, raw) in members {
                let value = crate::parse::parse_spec_fragment(raw.get())
                    .map_err(|e| Error::InvalidManual(format!("schema '{name}': {e}")))?;
                built.insert(name, value);
            }
            // Where the parser found them; a later duplicate key may have replaced the
            // container with something else, which then wins as it would have.
            let parent = match key {
                "schemas" => self.doc.get_mut("components"),
                _ => Some(&mut self.doc),
            };
            if let Some(Value::Object(parent)) = parent {
                parent.insert(key.to_string(), Value::Object(built));
            }
        }
        let canonical = path.canonicalize().map_err(|e| Error::InvalidManual(format!("{}: {e}", path.display())))?;
        let files = crate::external_refs::load_files(&self.doc, &canonical, max_size)?;
        // An unsupported version is left for the conversion to report.
        let swagger2 = is_swagger2(&self.doc).unwrap_or(false);
        crate::external_refs::bundle(&mut self.doc, swagger2, &canonical, &files)?;
        self.parts.external_refs = false;
        Ok(())
    }
}

/// Convert a spec document (built whole). See [`convert_spec`].
pub fn convert(doc: Value, opts: &ConvertOptions) -> Result<Manual> {
    convert_spec(Spec::from(doc), opts)
}

/// Convert a spec. Takes the document by value: its schema definitions, and the
/// operations' own parameter, body and response schemas, move into the manual instead
/// of being copied (a copy of Graph's ~22,000 operations was a third of its conversion
/// time and held twice the memory). What is reached through a `$ref` is copied.
/// Definitions held back as raw text stay raw in the manual until a tool needs them.
pub fn convert_spec(spec: Spec, opts: &ConvertOptions) -> Result<Manual> {
    let Spec { mut doc, parts } = spec;
    if parts.external_refs {
        // Kept as before (as python-utcp does): a parameter behind such a ref is left out,
        // and a schema that keeps one may not compile, failing that tool's calls.
        tracing::warn!(
            "a `$ref` names another document: refs to other files are followed only for a spec registered from a file"
        );
    }
    let swagger2 = is_swagger2(&doc)?;
    let defs =
        if swagger2 { doc.get_mut("definitions") } else { doc.pointer_mut("/components/schemas") }.map(Value::take);
    let raw_defs = if swagger2 { parts.definitions } else { parts.component_schemas };
    let paths = match doc.get("paths") {
        Some(Value::Object(p)) if refs_into_paths(&doc, p) => p.clone(),
        Some(Value::Object(_)) => match doc.get_mut("paths").map(Value::take) {
            Some(Value::Object(p)) => p,
            _ => Map::new(),
        },
        None => Map::new(),
        Some(_) => return Err(Error::InvalidManual("OpenAPI `paths` must be an object".into())),
    };
    let doc_owned = doc;
    let doc = &doc_owned;
    let base_url = match &opts.base_url {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => base_url(doc, swagger2, opts.spec_url.as_deref()),
    };
    let defs_root: &str = if swagger2 { "#/definitions/" } else { "#/components/schemas/" };
    // A relative token URL is resolved like a relative server URL: against the URL the
    // spec came from, else against the (absolute) server URL.
    let token_base = opts.spec_url.as_deref().or(Some(base_url.as_str())).and_then(|u| url::Url::parse(u).ok());
    let ctx = Ctx { doc, swagger2, defs_root, schemes: security_schemes(doc, swagger2, token_base.as_ref()) };
    let mut tools = Vec::new();
    let mut used_names: HashMap<String, usize> = HashMap::new();
    let large = paths.len() > 50;
    for (path, item) in paths {
        let Value::Object(mut item) = item else { continue };
        let referenced = match item.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => match doc.pointer(pointer) {
                Some(Value::Object(target)) => Some(target),
                _ => None,
            },
            None => None,
        };
        let shared_params = match referenced {
            Some(target) => target.get("parameters").cloned(),
            None => item.swap_remove("parameters"),
        };
        let shared_params = match shared_params {
            Some(Value::Array(list)) => list,
            _ => Vec::new(),
        };
        for method in METHODS {
            let op = match referenced {
                Some(target) => target.get(method).cloned(),
                None => item.swap_remove(method),
            };
            let Some(Value::Object(op)) = op else { continue };
            let mut tool = ctx.operation(&base_url, &path, method, op, &shared_params)?;
            let n = used_names.entry(tool.name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                tool.name = format!("{}_{}", tool.name, n);
            }
            tools.push(tool);
        }
    }
    let mut extra = Map::new();
    if let Some(info) = doc.get("info") {
        extra.insert("info".into(), info.clone());
    }
    let version = doc.pointer("/info/version").and_then(Value::as_str).unwrap_or("1.0.0").to_string();
    let shared_defs = ctx.shared_defs(defs, raw_defs).map(Arc::new);
    drop(ctx);
    if large {
        drop_in_background(doc_owned);
    }
    Ok(Manual {
        utcp_version: UTCP_VERSION.into(),
        manual_version: version,
        tools,
        extra,
        shared_defs,
        fetched_from: None,
    })
}

/// Whether a `$ref` the converter follows (a path item, parameter, request body or
/// response, or a link of a chain of them) points into `#/paths/`: then the
/// operations are copied rather than moved, so what such a ref reaches stays.
/// Looks at the refs' text only: a ref to a whole component is not followed, as every
/// component's own ref is looked at too; other refs are followed.
fn refs_into_paths(doc: &Value, paths: &Map<String, Value>) -> bool {
    /// `Some(answer)` when `r` itself decides, `None` when its target must be looked at.
    fn decides(r: &str) -> Option<bool> {
        if r.starts_with("#/paths/") {
            return Some(true);
        }
        let whole_component = match r.strip_prefix("#/components/") {
            Some(rest) => rest.split('/').count() == 2,
            None => {
                ["#/parameters/", "#/responses/"].iter().any(|p| r.strip_prefix(p).is_some_and(|n| !n.contains('/')))
            }
        };
        (whole_component || !r.starts_with("#/")).then_some(false)
    }
    let reaches = |v: &Value| -> bool {
        let Some(first) = v.get("$ref").and_then(Value::as_str) else { return false };
        let mut r = first;
        let mut target;
        for _ in 0..32 {
            if let Some(answer) = decides(r) {
                return answer;
            }
            target = match doc.pointer(&r[1..]) {
                Some(t) => t,
                None => return false,
            };
            r = match target.get("$ref").and_then(Value::as_str) {
                Some(next) => next,
                None => return false,
            };
        }
        false
    };
    let any_in = |v: Option<&Value>| match v {
        Some(Value::Array(list)) => list.iter().any(reaches),
        Some(Value::Object(map)) => map.values().any(reaches),
        _ => false,
    };
    let components = doc.get("components").and_then(Value::as_object);
    if components.is_some_and(|c| c.values().any(|section| any_in(Some(section))))
        || any_in(doc.get("parameters"))
        || any_in(doc.get("responses"))
    {
        return true;
    }
    paths.values().any(|item| {
        reaches(item)
            || any_in(item.get("parameters"))
            || item.as_object().is_some_and(|item| {
                item.iter().any(|(method, op)| {
                    METHODS.contains(&method.as_str())
                        && (any_in(op.get("parameters"))
                            || op.get("requestBody").is_some_and(reaches)
                            || any_in(op.get("responses")))
                })
            })
    })
}

/// `{"type": "object", "properties": ...}`, moving `properties` in (`json!` would
/// copy it through the serializer: a tenth of Graph's registration time).
fn object_schema(properties: Map<String, Value>) -> Value {
    let mut schema = Map::with_capacity(3);
    schema.insert("type".into(), Value::String("object".into()));
    schema.insert("properties".into(), Value::Object(properties));
    Value::Object(schema)
}

/// Freeing what is left of a parsed spec (its examples, descriptions, components) takes
/// time in proportion to its size; a large spec's is freed on a short-lived thread,
/// far cheaper to start, so registration does not wait for it.
fn drop_in_background(doc: Value) {
    if let Err(e) = std::thread::Builder::new().name("utp-drop".into()).spawn(move || drop(doc)) {
        tracing::debug!("could not free the spec in the background: {e}");
    }
}

/// A manual name for an inline spec: its `info.title`.
pub fn title(doc: &Value) -> Option<&str> {
    doc.pointer("/info/title").and_then(Value::as_str)
}

fn base_url(doc: &Value, swagger2: bool, spec_url: Option<&str>) -> String {
    let raw = if swagger2 {
        let host = doc.get("host").and_then(Value::as_str);
        let base_path = doc.get("basePath").and_then(Value::as_str).unwrap_or("");
        let schemes: Vec<&str> = doc
            .get("schemes")
            .and_then(Value::as_array)
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let scheme = if schemes.is_empty() || schemes.contains(&"https") { "https" } else { schemes[0] };
        match host {
            Some(h) => format!("{scheme}://{h}{base_path}"),
            None => base_path.to_string(),
        }
    } else {
        match doc.pointer("/servers/0") {
            Some(server) => {
                let mut url = server.get("url").and_then(Value::as_str).unwrap_or("").to_string();
                if let Some(vars) = server.get("variables").and_then(Value::as_object) {
                    for (name, var) in vars {
                        let default = var.get("default").and_then(Value::as_str).unwrap_or("");
                        url = url.replace(&format!("{{{name}}}"), default);
                    }
                }
                url
            }
            None => String::new(),
        }
    };
    let absolute = raw.contains("://");
    let resolved = match (absolute, spec_url.and_then(|s| url::Url::parse(s).ok())) {
        (false, Some(base)) => base.join(if raw.is_empty() { "/" } else { &raw }).map(|u| u.to_string()).unwrap_or(raw),
        _ => raw,
    };
    resolved.trim_end_matches('/').to_string()
}

struct Ctx<'a> {
    doc: &'a Value,
    swagger2: bool,
    defs_root: &'static str,
    schemes: BTreeMap<String, Auth>,
}

impl<'a> Ctx<'a> {
    /// Follow a local `$ref` (parameters, request bodies, responses, path items); at most 32 hops.
    fn deref<'v>(&self, mut v: &'v Value) -> &'v Value
    where
        'a: 'v,
    {
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) if r.starts_with("#/") => match self.doc.pointer(&r[1..]) {
                    Some(target) => v = target,
                    None => return v,
                },
                _ => return v,
            }
        }
        v
    }

    /// A parameter, request body or response: itself (owned) or, for a local `$ref`,
    /// what it points to (borrowed from the document; at most 32 hops).
    fn resolve(&self, v: Value) -> Cow<'a, Value> {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with("#/") => match self.doc.pointer(&r[1..]) {
                Some(target) => Cow::Borrowed(self.deref(target)),
                None => Cow::Owned(v),
            },
            _ => Cow::Owned(v),
        }
    }

    fn operation(
        &self,
        base_url: &str,
        path: &str,
        method: &str,
        mut op: Map<String, Value>,
        shared_params: &[Value],
    ) -> Result<Tool> {
        let name = match op.get("operationId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => identifier(id),
            _ => identifier(&format!("{method}_{}", path.trim_matches('/'))),
        };
        let description = match (op.swap_remove("summary"), op.swap_remove("description")) {
            (Some(Value::String(s)), _) if !s.is_empty() => s,
            (_, Some(Value::String(d))) => d,
            _ => String::new(),
        };
        let tags: Vec<String> = match op.swap_remove("tags") {
            Some(Value::Array(t)) => t
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };

        // Operation parameters override path-level ones with the same (name, in).
        let op_params: Vec<Cow<'_, Value>> = match op.swap_remove("parameters") {
            Some(Value::Array(list)) => list.into_iter().map(|p| self.resolve(p)).collect(),
            _ => Vec::new(),
        };
        fn key(p: &Value) -> (Option<&str>, Option<&str>) {
            (p.get("name").and_then(Value::as_str), p.get("in").and_then(Value::as_str))
        }
        let mut params: Vec<Cow<'_, Value>> = Vec::with_capacity(shared_params.len() + op_params.len());
        if !shared_params.is_empty() {
            let op_keys: Vec<_> = op_params.iter().map(|p| key(p)).collect();
            for p in shared_params {
                let p = self.deref(p);
                if !op_keys.contains(&key(p)) {
                    params.push(Cow::Borrowed(p));
                }
            }
        }
        params.extend(op_params);

        let mut properties = Map::with_capacity(params.len() + 1);
        let mut required = Vec::new();
        let mut header_fields = Vec::new();
        let mut styles = Map::with_capacity(params.len());
        let mut body_field = None;
        let mut form_props = Map::new();
        let mut form_required = Vec::new();
        for p in params {
            // One pass over the parameter's keys (it has ~5; nine lookups cost more).
            let Some(fields) = p.as_object() else { continue };
            let (mut pname, mut location, mut description, mut required_flag) = (None, None, None, None);
            let mut style_fields: [Option<&Value>; 4] = [None; 4];
            for (k, v) in fields {
                match k.as_str() {
                    "name" => pname = v.as_str(),
                    "in" => location = v.as_str(),
                    "description" => description = Some(v),
                    "required" => required_flag = Some(v),
                    "style" => style_fields[0] = Some(v),
                    "explode" => style_fields[1] = Some(v),
                    "collectionFormat" => style_fields[2] = Some(v),
                    "allowReserved" => style_fields[3] = Some(v),
                    _ => {}
                }
            }
            let (Some(pname), Some(location)) = (pname, location) else { continue };
            let declared_examples = examples::declared(fields, |e| self.deref(e));
            let (pname, location) = (pname.to_string(), location.to_string());
            let location = location.as_str();
            let description = description.cloned();
            let is_required = required_flag.and_then(Value::as_bool).unwrap_or(location == "path");
            let mut style = Map::new();
            if !matches!(location, "body" | "formData") {
                style = Map::with_capacity(1 + style_fields.iter().flatten().count());
                style.insert("in".into(), Value::String(location.to_string()));
                for (k, v) in ["style", "explode", "collectionFormat", "allowReserved"].into_iter().zip(style_fields) {
                    if let Some(v) = v {
                        style.insert(k.into(), v.clone());
                    }
                }
            }
            let mut schema = if self.swagger2 && location != "body" {
                swagger2_param_schema(&p)
            } else {
                let schema = match p {
                    Cow::Owned(mut v) => v.get_mut("schema").map(Value::take),
                    Cow::Borrowed(v) => v.get("schema").cloned(),
                };
                schema.unwrap_or_else(|| if location == "body" { json!({}) } else { json!({"type": "string"}) })
            };
            if let (Some(d), Some(obj)) = (description, schema.as_object_mut()) {
                obj.entry("description").or_insert(d);
            }
            self.rewrite_refs(&mut schema);
            examples::fold_into(&mut schema, declared_examples);
            match location {
                "body" => {
                    body_field = Some("body".to_string());
                    properties.insert("body".into(), schema);
                    if is_required {
                        required.push(json!("body"));
                    }
                    continue;
                }
                "formData" => {
                    if is_required {
                        form_required.push(Value::String(pname.clone()));
                    }
                    form_props.insert(pname, schema);
                    continue;
                }
                "header" => header_fields.push(pname.clone()),
                _ => {}
            }
            styles.insert(pname.clone(), Value::Object(style));
            if is_required {
                required.push(Value::String(pname.clone()));
            }
            properties.insert(pname, schema);
        }
        let mut content_type = "application/json".to_string();
        if !form_props.is_empty() {
            body_field = Some("body".into());
            let consumes = op.get("consumes").or_else(|| self.doc.get("consumes")).and_then(Value::as_array);
            let multipart = consumes.is_some_and(|c| c.iter().any(|v| v.as_str() == Some("multipart/form-data")));
            content_type = if multipart { "multipart/form-data" } else { "application/x-www-form-urlencoded" }.into();
            let mut body = object_schema(form_props);
            if !form_required.is_empty() {
                body["required"] = Value::Array(form_required);
                required.push(json!("body"));
            }
            properties.insert("body".into(), body);
        }
        if let Some(rb) = op.swap_remove("requestBody") {
            let mut rb = self.resolve(rb);
            let pick = rb.get("content").and_then(Value::as_object).and_then(|content| {
                ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"]
                    .iter()
                    .find(|ct| content.contains_key(**ct))
                    .map(|s| s.to_string())
                    .or_else(|| content.keys().find(|k| k.contains("json")).cloned())
                    .or_else(|| content.keys().next().cloned())
            });
            if let Some(ct) = pick {
                let description = rb.get("description").cloned();
                let is_required = rb.get("required").and_then(Value::as_bool).unwrap_or(false);
                let declared_examples = match rb.get("content").and_then(|c| c.get(&ct)) {
                    Some(Value::Object(media)) => examples::declared(media, |e| self.deref(e)),
                    _ => Vec::new(),
                };
                let schema = match &mut rb {
                    Cow::Owned(v) => v["content"][&ct].get_mut("schema").map(Value::take),
                    Cow::Borrowed(v) => v["content"][&ct].get("schema").cloned(),
                };
                let mut schema = schema.unwrap_or_else(|| json!({}));
                self.rewrite_refs(&mut schema);
                examples::fold_into(&mut schema, declared_examples);
                if let (Some(d), Some(obj)) = (description, schema.as_object_mut()) {
                    obj.entry("description").or_insert(d);
                }
                properties.insert("body".into(), schema);
                if is_required {
                    required.push(json!("body"));
                }
                body_field = Some("body".into());
                content_type = ct;
            }
        }
        let mut inputs = object_schema(properties);
        if !required.is_empty() {
            inputs["required"] = Value::Array(required);
        }

        let mut outputs = self.response_schema(&mut op).unwrap_or_else(|| json!({}));
        self.rewrite_refs(&mut outputs);

        let security = op.get("security").or_else(|| self.doc.get("security"));
        let auth = security
            .and_then(Value::as_array)
            .and_then(|reqs| {
                reqs.iter().filter_map(Value::as_object).find_map(|r| r.keys().find_map(|k| self.schemes.get(k)))
            })
            .cloned();

        let mut extra = Map::new();
        if !styles.is_empty() {
            extra.insert("x-utp-parameters".into(), Value::Object(styles));
        }
        let template = HttpTemplate {
            common: TemplateCommon { name: None, auth, allowed_communication_protocols: None },
            url: format!("{base_url}{path}"),
            http_method: method.to_ascii_uppercase(),
            content_type,
            request: RequestFields {
                headers: None,
                body_field,
                header_fields: (!header_fields.is_empty()).then_some(header_fields),
            },
            extra,
        };
        Ok(Tool {
            name,
            description,
            inputs,
            outputs,
            tags,
            average_response_size: None,
            tool_call_template: CallTemplate::Http(template),
            extra: Map::new(),
        })
    }

    /// The schema of the first 2xx response, else `default` (taken out of the
    /// operation, or copied when the response is a `$ref`).
    fn response_schema(&self, op: &mut Map<String, Value>) -> Option<Value> {
        let Some(Value::Object(mut responses)) = op.swap_remove("responses") else { return None };
        let code =
            responses.keys().filter(|k| k.starts_with('2')).min().cloned().unwrap_or_else(|| "default".to_string());
        let mut resp = match self.resolve(responses.swap_remove(&code)?) {
            Cow::Borrowed(r) => {
                if self.swagger2 {
                    return r.get("schema").cloned();
                }
                let content = r.get("content")?.as_object()?;
                let media = content
                    .get("application/json")
                    .or_else(|| content.iter().find(|(k, _)| k.contains("json")).map(|(_, v)| v))
                    .or_else(|| content.values().next())?;
                return media.get("schema").cloned();
            }
            Cow::Owned(r) => r,
        };
        if self.swagger2 {
            return resp.get_mut("schema").map(Value::take);
        }
        let content = resp.get_mut("content")?.as_object_mut()?;
        let key = match content.contains_key("application/json") {
            true => "application/json".to_string(),
            false => content.keys().find(|k| k.contains("json")).or_else(|| content.keys().next())?.clone(),
        };
        content.get_mut(&key)?.get_mut("schema").map(Value::take)
    }

    /// Rewrite `#/components/schemas/X` (3.x) or `#/definitions/X` (2.0) to
    /// `#/$defs/X` in place (a tool's references are found again when it is serialized).
    fn rewrite_refs(&self, v: &mut Value) {
        rewrite_refs(v, self.defs_root, &mut |_| {});
    }

    /// The spec's definitions with their reference graph: raw ones held back by the
    /// parser stay raw (parsed, rewritten and scanned when a tool first needs them),
    /// built ones (`container`) are rewritten to `#/$defs/` as they are added.
    fn shared_defs(&self, container: Option<Value>, raw: Option<Vec<(String, Box<RawValue>)>>) -> Option<SharedDefs> {
        let mut shared = SharedDefs::new(self.defs_root);
        if let Some(raw) = raw {
            for (name, def) in raw {
                shared.insert_raw(name, def);
            }
            return Some(shared);
        }
        let Some(Value::Object(container)) = container else { return None };
        for (name, def) in container {
            shared.insert(name, def);
        }
        Some(shared)
    }
}

/// A Swagger 2.0 non-body parameter carries its schema inline.
fn swagger2_param_schema(p: &Value) -> Value {
    let mut schema = Map::new();
    for k in ["type", "format", "items", "enum", "default", "minimum", "maximum", "pattern", "minLength", "maxLength"] {
        if let Some(v) = p.get(k) {
            schema.insert(k.into(), v.clone());
        }
    }
    if !schema.contains_key("type") {
        schema.insert("type".into(), json!("string"));
    }
    Value::Object(schema)
}

/// Letters, digits and `_`, no leading digit, never empty.
fn identifier(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut last_underscore = false;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
            last_underscore = false;
        } else if !last_underscore {
            out.push('_');
            last_underscore = true;
        }
    }
    let out = out.trim_matches('_').to_string();
    match out.chars().next() {
        None => "operation".into(),
        Some(c) if c.is_ascii_digit() => format!("op_{out}"),
        Some(_) => out,
    }
}

/// One auth per security scheme, its secrets in variables named after the scheme.
/// A relative OAuth2 `tokenUrl` (`/oauth/token`, `//host/oauth/token`) is resolved
/// against `token_base`; without one it stays as written and calls fail saying so.
fn security_schemes(doc: &Value, swagger2: bool, token_base: Option<&url::Url>) -> BTreeMap<String, Auth> {
    let defs = if swagger2 { doc.get("securityDefinitions") } else { doc.pointer("/components/securitySchemes") };
    let mut out = BTreeMap::new();
    let Some(defs) = defs.and_then(Value::as_object) else { return out };
    for (name, scheme) in defs {
        let var = identifier(name).to_ascii_uppercase();
        let ty = scheme.get("type").and_then(Value::as_str).unwrap_or("");
        let http_scheme = scheme.get("scheme").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        let auth = match ty {
            "apiKey" => Some(Auth::ApiKey {
                api_key: format!("${{{var}}}"),
                var_name: scheme.get("name").and_then(Value::as_str).unwrap_or("X-Api-Key").to_string(),
                location: scheme.get("in").and_then(Value::as_str).unwrap_or("header").to_string(),
            }),
            "basic" => Some(basic(&var)),
            "http" if http_scheme == "basic" => Some(basic(&var)),
            "http" if http_scheme == "bearer" => Some(Auth::ApiKey {
                api_key: format!("Bearer ${{{var}_TOKEN}}"),
                var_name: "Authorization".into(),
                location: "header".into(),
            }),
            "oauth2" => {
                let token_url = if swagger2 {
                    (scheme.get("flow").and_then(Value::as_str) == Some("application"))
                        .then(|| scheme.get("tokenUrl").and_then(Value::as_str))
                        .flatten()
                } else {
                    scheme.pointer("/flows/clientCredentials/tokenUrl").and_then(Value::as_str)
                };
                token_url.map(|t| Auth::OAuth2 {
                    token_url: resolve_token_url(t, token_base),
                    client_id: format!("${{{var}_CLIENT_ID}}"),
                    client_secret: format!("${{{var}_CLIENT_SECRET}}"),
                    scope: None,
                })
            }
            _ => None,
        };
        if let Some(a) = auth {
            out.insert(name.clone(), a);
        }
    }
    out
}

fn resolve_token_url(token_url: &str, base: Option<&url::Url>) -> String {
    match base {
        Some(base) if !token_url.contains("://") => {
            base.join(token_url).map(|u| u.to_string()).unwrap_or_else(|_| token_url.to_string())
        }
        _ => token_url.to_string(),
    }
}

fn basic(var: &str) -> Auth {
    Auth::Basic { username: format!("${{{var}_USERNAME}}"), password: format!("${{{var}_PASSWORD}}") }
}
