//! OpenAPI 2.0 (Swagger) / 3.0 / 3.1 → UTCP manual with `http` call templates.
//!
//! One tool per operation. Schemas referenced by `$ref` are rewritten to
//! `#/$defs/<name>` and held once per manual (`Manual::shared_defs`); a tool's
//! schema gets the closure it reaches only when the tool is serialized. Inlining
//! per operation explodes on large specs (Graph's schemas reach one another) and
//! loops on recursive schemas. Auth is one variable set per security
//! scheme, named after the scheme, not one per operation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::manual::{
    Auth, CallTemplate, HttpTemplate, Manual, RequestFields, SharedDefs, TemplateCommon, Tool, UTCP_VERSION,
};

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// Conversion inputs beyond the document itself.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Overrides the spec's servers / host+basePath.
    pub base_url: Option<String>,
    /// Where the spec was fetched from: relative server URLs resolve against it.
    pub spec_url: Option<String>,
}

/// Is this JSON document an OpenAPI/Swagger description?
pub fn is_openapi(doc: &Value) -> bool {
    doc.get("openapi").is_some_and(Value::is_string) || doc.get("swagger").is_some()
}

/// Convert a spec. Takes the document by value: its schema definitions move into
/// the manual's shared definitions instead of being copied.
pub fn convert(mut doc: Value, opts: &ConvertOptions) -> Result<Manual> {
    let swagger2 = match (doc.get("swagger"), doc.get("openapi")) {
        (Some(Value::String(v)), _) if v.starts_with('2') => true,
        (_, Some(Value::String(v))) if v.starts_with('3') => false,
        (Some(v), _) | (_, Some(v)) => {
            return Err(Error::InvalidManual(format!("unsupported OpenAPI version {v} (expected 2.0, 3.0 or 3.1)")));
        }
        _ => return Err(Error::InvalidManual("not an OpenAPI document: no `openapi` or `swagger` version".into())),
    };
    let defs = if swagger2 { doc.get_mut("definitions") } else { doc.pointer_mut("/components/schemas") }
        .map(Value::take);
    let doc_owned = doc;
    let doc = &doc_owned;
    let paths = match doc.get("paths") {
        Some(Value::Object(p)) => p,
        None => &Map::new(),
        Some(_) => return Err(Error::InvalidManual("OpenAPI `paths` must be an object".into())),
    };
    let base_url = match &opts.base_url {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => base_url(doc, swagger2, opts.spec_url.as_deref()),
    };
    let defs_root: &str = if swagger2 { "#/definitions/" } else { "#/components/schemas/" };
    let ctx = Ctx { doc, swagger2, defs_root, schemes: security_schemes(doc, swagger2) };
    let mut tools = Vec::new();
    let mut used_names: HashMap<String, usize> = HashMap::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else { continue };
        let item = ctx.deref_obj(item);
        let shared_params = item.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default();
        for method in METHODS {
            let Some(op) = item.get(method).and_then(Value::as_object) else { continue };
            let mut tool = ctx.operation(&base_url, path, method, op, &shared_params)?;
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
    let shared_defs = defs.and_then(|d| ctx.shared_defs(d)).map(Arc::new);
    drop(ctx);
    drop_in_background(doc_owned);
    Ok(Manual { utcp_version: UTCP_VERSION.into(), manual_version: version, tools, extra, shared_defs })
}

/// `{"type": "object", "properties": ...}`, moving `properties` in (`json!` would
/// copy it through the serializer: a tenth of Graph's registration time).
fn object_schema(properties: Map<String, Value>) -> Value {
    let mut schema = Map::with_capacity(3);
    schema.insert("type".into(), Value::String("object".into()));
    schema.insert("properties".into(), Value::Object(properties));
    Value::Object(schema)
}

/// Freeing a parsed spec takes ~2 ms per MB (a third of a second for Graph's 47 MB);
/// any but a small one is freed on a short-lived thread (~20 µs to start) so
/// registration does not wait for it.
fn drop_in_background(doc: Value) {
    let large = doc.get("paths").and_then(Value::as_object).is_some_and(|p| p.len() > 50);
    if large {
        if let Err(e) = std::thread::Builder::new().name("utp-drop".into()).spawn(move || drop(doc)) {
            tracing::debug!("could not free the spec in the background: {e}");
        }
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
        let schemes: Vec<&str> =
            doc.get("schemes").and_then(Value::as_array).map(|s| s.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
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

    fn deref_obj(&self, obj: &'a Map<String, Value>) -> &'a Map<String, Value> {
        match obj.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')).and_then(|p| self.doc.pointer(p)) {
            Some(Value::Object(target)) => target,
            _ => obj,
        }
    }

    fn operation(
        &self,
        base_url: &str,
        path: &str,
        method: &str,
        op: &Map<String, Value>,
        shared_params: &[Value],
    ) -> Result<Tool> {
        let name = match op.get("operationId").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => identifier(id),
            _ => identifier(&format!("{method}_{}", path.trim_matches('/'))),
        };
        let description = op
            .get("summary")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| op.get("description").and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        let tags: Vec<String> =
            op.get("tags").and_then(Value::as_array).map(|t| t.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();

        // Operation parameters override path-level ones with the same (name, in).
        let mut params: Vec<&Value> = Vec::new();
        let op_params = op.get("parameters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        let key = |p: &Value| (p.get("name").and_then(Value::as_str).map(String::from), p.get("in").and_then(Value::as_str).map(String::from));
        let op_keys: BTreeSet<_> = op_params.iter().map(|p| key(self.deref(p))).collect();
        for p in shared_params {
            if !op_keys.contains(&key(self.deref(p))) {
                params.push(self.deref(p));
            }
        }
        params.extend(op_params.iter().map(|p| self.deref(p)));

        let mut properties = Map::new();
        let mut required = Vec::new();
        let mut header_fields = Vec::new();
        let mut styles = Map::new();
        let mut refs = BTreeSet::new();
        let mut body_field = None;
        let mut form_props = Map::new();
        let mut form_required = Vec::new();
        for p in params {
            let (Some(pname), Some(location)) = (p.get("name").and_then(Value::as_str), p.get("in").and_then(Value::as_str)) else {
                continue;
            };
            let mut schema = if self.swagger2 && location != "body" {
                swagger2_param_schema(p)
            } else if location == "body" {
                p.get("schema").cloned().unwrap_or_else(|| json!({}))
            } else {
                p.get("schema").cloned().unwrap_or_else(|| json!({"type": "string"}))
            };
            if let (Some(d), Some(obj)) = (p.get("description"), schema.as_object_mut()) {
                obj.entry("description").or_insert(d.clone());
            }
            self.rewrite_refs(&mut schema, &mut refs);
            let is_required = p.get("required").and_then(Value::as_bool).unwrap_or(location == "path");
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
                    form_props.insert(pname.into(), schema);
                    if is_required {
                        form_required.push(json!(pname));
                    }
                    continue;
                }
                "header" => header_fields.push(pname.to_string()),
                _ => {}
            }
            let mut style = Map::new();
            style.insert("in".into(), json!(location));
            for k in ["style", "explode", "collectionFormat", "allowReserved"] {
                if let Some(v) = p.get(k) {
                    style.insert(k.into(), v.clone());
                }
            }
            styles.insert(pname.into(), Value::Object(style));
            properties.insert(pname.into(), schema);
            if is_required {
                required.push(json!(pname));
            }
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
        if let Some(rb) = op.get("requestBody") {
            let rb = self.deref(rb);
            if let Some(content) = rb.get("content").and_then(Value::as_object) {
                let pick = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"]
                    .iter()
                    .find(|ct| content.contains_key(**ct))
                    .map(|s| s.to_string())
                    .or_else(|| content.keys().find(|k| k.contains("json")).cloned())
                    .or_else(|| content.keys().next().cloned());
                if let Some(ct) = pick {
                    let mut schema = content[&ct].get("schema").cloned().unwrap_or_else(|| json!({}));
                    self.rewrite_refs(&mut schema, &mut refs);
                    if let (Some(d), Some(obj)) = (rb.get("description"), schema.as_object_mut()) {
                        obj.entry("description").or_insert(d.clone());
                    }
                    properties.insert("body".into(), schema);
                    if rb.get("required").and_then(Value::as_bool).unwrap_or(false) {
                        required.push(json!("body"));
                    }
                    body_field = Some("body".into());
                    content_type = ct;
                }
            }
        }
        let mut inputs = object_schema(properties);
        if !required.is_empty() {
            inputs["required"] = Value::Array(required);
        }
        drop(refs);

        let mut outputs = self.response_schema(op).unwrap_or_else(|| json!({}));
        self.rewrite_refs(&mut outputs, &mut BTreeSet::new());

        let security = op.get("security").or_else(|| self.doc.get("security"));
        let auth = security
            .and_then(Value::as_array)
            .and_then(|reqs| reqs.iter().filter_map(Value::as_object).find_map(|r| r.keys().find_map(|k| self.schemes.get(k))))
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

    /// The schema of the first 2xx response, else `default`.
    fn response_schema(&self, op: &Map<String, Value>) -> Option<Value> {
        let responses = op.get("responses")?.as_object()?;
        let mut codes: Vec<&String> = responses.keys().filter(|k| k.starts_with('2')).collect();
        codes.sort();
        let resp = codes.first().map(|c| &responses[*c]).or_else(|| responses.get("default"))?;
        let resp = self.deref(resp);
        if self.swagger2 {
            return resp.get("schema").cloned();
        }
        let content = resp.get("content")?.as_object()?;
        let media = content.get("application/json").or_else(|| content.iter().find(|(k, _)| k.contains("json")).map(|(_, v)| v)).or_else(|| content.values().next())?;
        media.get("schema").cloned()
    }

    /// Rewrite `#/components/schemas/X` (3.x) or `#/definitions/X` (2.0) to
    /// `#/$defs/X`, collecting the names referenced.
    fn rewrite_refs(&self, v: &mut Value, refs: &mut BTreeSet<String>) {
        match v {
            Value::Object(obj) => {
                if let Some(Value::String(r)) = obj.get_mut("$ref") {
                    if let Some(name) = r.strip_prefix(self.defs_root) {
                        refs.insert(name.to_string());
                        *r = format!("#/$defs/{name}");
                    }
                }
                for (k, child) in obj.iter_mut() {
                    if k != "$ref" {
                        self.rewrite_refs(child, refs);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.rewrite_refs(i, refs)),
            _ => {}
        }
    }

    /// The spec's definitions, refs rewritten to `#/$defs/`, with their reference graph.
    fn shared_defs(&self, container: Value) -> Option<SharedDefs> {
        let Value::Object(container) = container else { return None };
        let mut shared = SharedDefs::default();
        for (name, mut def) in container {
            let mut found = BTreeSet::new();
            self.rewrite_refs(&mut def, &mut found);
            shared.edges.insert(name.clone(), found.into_iter().collect());
            shared.defs.insert(name, def);
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
fn security_schemes(doc: &Value, swagger2: bool) -> BTreeMap<String, Auth> {
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
                    token_url: t.to_string(),
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

fn basic(var: &str) -> Auth {
    Auth::Basic { username: format!("${{{var}_USERNAME}}"), password: format!("${{{var}_PASSWORD}}") }
}
