//! Compiled rule conditions and time windows.
//!
//! A condition of the common shape `<operand> <op> <operand>` (operands: `params.x.y`,
//! `constants.x`, `tool`, `action`, `tenant`, `session`, or a literal) is evaluated
//! natively: tens of nanoseconds instead of a CEL evaluation's microsecond. Anything
//! else is a CEL program (the `cel` crate). Both give the same answers; both fail
//! (and so deny) on a missing field or a type mismatch.

use std::cmp::Ordering;
use std::sync::Arc;

use cel::common::types::{CelNull, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::spec::WindowSpec;
use crate::json::json_kind;

/// What CEL conditions share across calls: the standard library environment and the
/// constants, both built once per engine: building the environment per evaluation
/// cost more than evaluating the rule.
pub struct CelShared {
    env: Arc<cel::Env>,
    constants: Box<dyn Val>,
}

impl CelShared {
    pub fn new(constants: &Value) -> Result<CelShared, String> {
        let constants = to_val(constants).map_err(|e| format!("business_rules: {e}"))?;
        Ok(CelShared { env: Arc::new(cel::Env::stdlib()), constants })
    }
}

fn to_val(value: &Value) -> Result<Box<dyn Val>, String> {
    Box::<dyn Val>::try_from(to_cel(value)).map_err(|e| format!("{e:?}"))
}

/// JSON → CEL with integers as `int` whenever they fit (`cel::to_value` makes every
/// non-negative integer a `uint`, and CEL does not mix the two: `params.amount + 1`
/// would be an error).
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => object_to_cel(map),
    }
}

fn object_to_cel(map: &Map<String, Value>) -> cel::Value {
    let map: std::collections::HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
    cel::Value::from(map)
}

/// What a condition sees of a call.
pub struct Facts<'a> {
    pub tool: &'a str,
    pub action: &'a str,
    pub params: &'a Map<String, Value>,
    pub tenant: Option<&'a str>,
    pub session: Option<&'a str>,
    pub now: jiff::Timestamp,
    pub constants: &'a Value,
    pub cel: &'a CelShared,
    /// `params` as a CEL value, converted when a CEL condition first reads it and
    /// shared by the call's other CEL conditions.
    pub cel_params: std::sync::OnceLock<Option<Box<dyn Val>>>,
}

/// CEL reads the call's variables straight from the facts, on demand: a condition
/// converts only what it references.
impl VariableResolver for Facts<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let text = |s: Option<&'b str>| s.map_or_else(|| CowVal::owned(CelNull), |s| CowVal::owned(CelString::from(s)));
        Some(match variable {
            "params" => CowVal::Borrowed(
                self.cel_params.get_or_init(|| Box::<dyn Val>::try_from(object_to_cel(self.params)).ok()).as_deref()?,
            ),
            "constants" => CowVal::Borrowed(&*self.cel.constants),
            "tool" => text(Some(self.tool)),
            "action" => text(Some(self.action)),
            "tenant" => text(self.tenant),
            "session" => text(self.session),
            "now" => CowVal::owned(CelString::from(self.now.to_string())),
            _ => return None,
        })
    }
}

/// A compiled condition.
pub enum Condition {
    Native(Native),
    Cel(Arc<cel::Program>),
}

/// The shapes evaluated without CEL: comparisons, `x in [literals]`, `has(params.x)`,
/// and `&&` / `||` of those (no parentheses, no negation).
#[derive(Debug, Clone, PartialEq)]
pub enum Native {
    Compare { left: Operand, op: CmpOp, right: Operand },
    In { item: Operand, list: Vec<Value> },
    Has { root: Operand, field: String },
    All(Vec<Native>),
    Any(Vec<Native>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Params(Vec<String>),
    Constants(Vec<String>),
    Tool,
    Action,
    Tenant,
    Session,
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, String> {
        if let Some(native) = native(source) {
            return Ok(Condition::Native(native));
        }
        let program = cel::Program::compile(source).map_err(|e| format!("invalid CEL condition `{source}`: {e}"))?;
        Ok(Condition::Cel(Arc::new(program)))
    }

    /// True / false, or why it could not be evaluated (which denies the call).
    pub fn eval(&self, facts: &Facts<'_>) -> Result<bool, String> {
        match self {
            Condition::Native(native) => native.eval(facts),
            Condition::Cel(program) => eval_cel(program, facts),
        }
    }
}

impl Native {
    /// `&&` and `||` are commutative as in CEL: a decided result wins over an
    /// error in another branch; otherwise the error stands (and denies).
    fn eval(&self, facts: &Facts<'_>) -> Result<bool, String> {
        match self {
            Native::Compare { left, op, right } => compare(&*resolve(left, facts)?, *op, &*resolve(right, facts)?),
            Native::In { item, list } => {
                let item = resolve(item, facts)?;
                Ok(list.iter().any(|v| compare(&item, CmpOp::Eq, v).unwrap_or(false)))
            }
            Native::Has { root: Operand::Params(path), field } if path.is_empty() => {
                Ok(facts.params.contains_key(field))
            }
            Native::Has { root, field } => match resolve(root, facts)?.as_ref() {
                Value::Object(map) => Ok(map.contains_key(field)),
                other => Err(format!("has() needs a map, found {}", json_kind(other))),
            },
            Native::All(parts) => combine(parts, facts, false),
            Native::Any(parts) => combine(parts, facts, true),
        }
    }
}

/// `Any` (decisive = true) or `All` (decisive = false).
fn combine(parts: &[Native], facts: &Facts<'_>, decisive: bool) -> Result<bool, String> {
    let mut error = None;
    for part in parts {
        match part.eval(facts) {
            Ok(v) if v == decisive => return Ok(decisive),
            Ok(_) => {}
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    error.map_or(Ok(!decisive), Err)
}

/// Parse the native shapes, or None (then CEL compiles it, and reports syntax errors).
fn native(source: &str) -> Option<Native> {
    let any = split_top(source, "||")?;
    let mut alternatives = Vec::with_capacity(any.len());
    for alternative in any {
        let all = split_top(alternative, "&&")?;
        let atoms = all.into_iter().map(atom).collect::<Option<Vec<_>>>()?;
        alternatives.push(if atoms.len() == 1 { atoms.into_iter().next()? } else { Native::All(atoms) });
    }
    Some(if alternatives.len() == 1 { alternatives.into_iter().next()? } else { Native::Any(alternatives) })
}

fn atom(text: &str) -> Option<Native> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix("has(").and_then(|t| t.strip_suffix(')')) {
        let (root, field) = inner.trim().rsplit_once('.')?;
        let root = match root {
            "params" => Operand::Params(Vec::new()),
            "constants" => Operand::Constants(Vec::new()),
            _ => match operand(root)? {
                op @ (Operand::Params(_) | Operand::Constants(_)) => op,
                _ => return None,
            },
        };
        let ident = !field.is_empty() && field.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
        return ident.then(|| Native::Has { root, field: field.to_string() });
    }
    if let [item, list] = split_top(text, " in ")?.as_slice() {
        let inner = list.trim().strip_prefix('[')?.strip_suffix(']')?;
        let list = if inner.trim().is_empty() {
            Vec::new()
        } else {
            split_top(inner, ",")?
                .into_iter()
                .map(|i| match operand(i.trim())? {
                    Operand::Literal(v) => Some(v),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?
        };
        return Some(Native::In { item: operand(item.trim())?, list });
    }
    simple_comparison(text).map(|(left, op, right)| Native::Compare { left, op, right })
}

/// Split at `sep` outside quotes and brackets; None on escapes (left to CEL).
fn split_top<'a>(source: &'a str, sep: &str) -> Option<Vec<&'a str>> {
    let bytes = source.as_bytes();
    let (mut parts, mut start, mut depth, mut quote, mut i) = (Vec::new(), 0, 0i32, None, 0);
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(_) if c == b'\\' => return None,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'"' | b'\'' => quote = Some(c),
                b'[' | b'(' => depth += 1,
                b']' | b')' => depth -= 1,
                _ if depth == 0 && source[i..].starts_with(sep) => {
                    parts.push(&source[start..i]);
                    i += sep.len();
                    start = i;
                    continue;
                }
                _ => {}
            },
        }
        i += 1;
    }
    (quote.is_none() && depth == 0).then(|| {
        parts.push(&source[start..]);
        parts
    })
}

fn resolve<'a>(operand: &'a Operand, facts: &'a Facts<'a>) -> Result<std::borrow::Cow<'a, Value>, String> {
    use std::borrow::Cow;
    let text = |s: Option<&str>, what: &str| {
        s.map(|s| Cow::Owned(Value::String(s.to_string()))).ok_or_else(|| format!("no {what} in this call"))
    };
    match operand {
        Operand::Literal(v) => Ok(Cow::Borrowed(v)),
        Operand::Tool => Ok(Cow::Owned(Value::String(facts.tool.to_string()))),
        Operand::Action => Ok(Cow::Owned(Value::String(facts.action.to_string()))),
        Operand::Tenant => text(facts.tenant, "tenant"),
        Operand::Session => text(facts.session, "session"),
        Operand::Params(path) => walk(facts.params.get(&path[0]), &path[1..])
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("no such field: params.{}", path.join("."))),
        Operand::Constants(path) => walk(Some(facts.constants), path)
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("no such constant: constants.{}", path.join("."))),
    }
}

fn walk<'a>(start: Option<&'a Value>, rest: &[String]) -> Option<&'a Value> {
    rest.iter().try_fold(start?, |v, key| v.get(key))
}

/// Numbers compare by value across integer and decimal forms (`1000.0 > 1000` is
/// false); strings lexicographically; booleans and null only for (in)equality.
fn compare(l: &Value, op: CmpOp, r: &Value) -> Result<bool, String> {
    let ordering = match (l, r) {
        (Value::Number(a), Value::Number(b)) => number_cmp(a, b),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) if matches!(op, CmpOp::Eq | CmpOp::Ne) => Some(a.cmp(b)),
        (Value::Null, Value::Null) if matches!(op, CmpOp::Eq | CmpOp::Ne) => Some(Ordering::Equal),
        _ => None,
    };
    let Some(ord) = ordering else {
        return Err(format!("cannot compare {} with {}", json_kind(l), json_kind(r)));
    };
    Ok(match op {
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
    })
}

fn number_cmp(a: &serde_json::Number, b: &serde_json::Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// `a.b > 3`, `params.amount >= constants.max`, `tool == 'x'`... or None.
fn simple_comparison(source: &str) -> Option<(Operand, CmpOp, Operand)> {
    const OPS: [(&str, CmpOp); 6] = [
        (">=", CmpOp::Ge),
        ("<=", CmpOp::Le),
        ("==", CmpOp::Eq),
        ("!=", CmpOp::Ne),
        (">", CmpOp::Gt),
        ("<", CmpOp::Lt),
    ];
    // Exactly one operator, outside quotes.
    let mut found = None;
    let bytes = source.as_bytes();
    let mut quote = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) if c == b'\\' => return None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None => {
                if let Some((text, op)) = OPS.iter().find(|(t, _)| source[i..].starts_with(t)) {
                    if found.is_some() {
                        return None;
                    }
                    found = Some((i, text.len(), *op));
                    i += text.len();
                    continue;
                }
                if b"!&|()[]{}+-*/%?:,".contains(&c) && !(c == b'-' && is_number_start(&source[i..])) {
                    return None;
                }
            }
        }
        i += 1;
    }
    let (at, len, op) = found?;
    Some((operand(source[..at].trim())?, op, operand(source[at + len..].trim())?))
}

fn is_number_start(s: &str) -> bool {
    s.len() > 1 && s.as_bytes()[1].is_ascii_digit()
}

fn operand(text: &str) -> Option<Operand> {
    if text.is_empty() {
        return None;
    }
    if let Some(inner) = text
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .or_else(|| text.strip_prefix('"').and_then(|t| t.strip_suffix('"')))
    {
        return (!inner.contains(['\'', '"'])).then(|| Operand::Literal(Value::String(inner.to_string())));
    }
    match text {
        "true" => return Some(Operand::Literal(Value::Bool(true))),
        "false" => return Some(Operand::Literal(Value::Bool(false))),
        "null" => return Some(Operand::Literal(Value::Null)),
        "tool" => return Some(Operand::Tool),
        "action" => return Some(Operand::Action),
        "tenant" => return Some(Operand::Tenant),
        "session" => return Some(Operand::Session),
        _ => {}
    }
    if text.as_bytes()[0].is_ascii_digit() || text.starts_with('-') {
        // CEL integer or double literal (no hex, no unsigned suffix: leave those to CEL).
        if text.chars().all(|c| c.is_ascii_digit() || c == '-') {
            return text.parse::<i64>().ok().map(|i| Operand::Literal(Value::from(i)));
        }
        let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
        return text.contains('.').then(|| Operand::Literal(Value::from(f)));
    }
    let mut parts = text.split('.');
    let root = parts.next()?;
    let path: Vec<String> = parts.map(str::to_string).collect();
    let ident = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.as_bytes()[0].is_ascii_digit()
    };
    if path.is_empty() || !path.iter().all(|p| ident(p)) {
        return None;
    }
    match root {
        "params" => Some(Operand::Params(path)),
        "constants" => Some(Operand::Constants(path)),
        _ => None,
    }
}

fn eval_cel(program: &cel::Program, facts: &Facts<'_>) -> Result<bool, String> {
    let mut ctx = cel::Context::with_env(facts.cel.env.clone());
    ctx.set_variable_resolver(facts);
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("condition gave {other:?}, not a boolean")),
        Err(e) => Err(e.to_string()),
    }
}

/// A compiled `allow_only_during` window.
pub struct Window {
    days: Option<Vec<Weekday>>,
    from: Time,
    to: Time,
    tz: TimeZone,
    timezone: String,
}

impl Window {
    pub fn compile(spec: &WindowSpec) -> Result<Window, String> {
        let tz = TimeZone::get(&spec.timezone).map_err(|e| format!("unknown time zone '{}': {e}", spec.timezone))?;
        let time = |s: &str| -> Result<Time, String> {
            Time::strptime("%H:%M", s.trim())
                .or_else(|_| Time::strptime("%H:%M:%S", s.trim()))
                .map_err(|_| format!("'{s}' is not a time of day (HH:MM)"))
        };
        let days = match &spec.days {
            None => None,
            Some(list) => Some(list.iter().map(|d| weekday(d)).collect::<Result<Vec<_>, _>>()?),
        };
        Ok(Window { days, from: time(&spec.from)?, to: time(&spec.to)?, tz, timezone: spec.timezone.clone() })
    }

    /// Whether `now` falls in the window, on the local wall clock of its time zone
    /// (so DST changes move the window with the clock). `[from, to)`, half-open; a
    /// window with `to <= from` spans midnight and belongs to the day it starts on.
    pub fn contains(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned_datetime(self.tz.clone());
        let t = local.time();
        let (inside, day) = if self.from < self.to {
            (t >= self.from && t < self.to, local.weekday())
        } else if t >= self.from {
            (true, local.weekday())
        } else {
            (t < self.to, local.weekday().previous())
        };
        inside && self.days.as_ref().is_none_or(|days| days.contains(&day))
    }

    pub fn describe(&self) -> String {
        format!("{}-{} {}", self.from.strftime("%H:%M"), self.to.strftime("%H:%M"), self.timezone)
    }
}

fn weekday(name: &str) -> Result<Weekday, String> {
    Ok(match name.trim().to_ascii_lowercase().get(..3) {
        Some("mon") => Weekday::Monday,
        Some("tue") => Weekday::Tuesday,
        Some("wed") => Weekday::Wednesday,
        Some("thu") => Weekday::Thursday,
        Some("fri") => Weekday::Friday,
        Some("sat") => Weekday::Saturday,
        Some("sun") => Weekday::Sunday,
        _ => return Err(format!("'{name}' is not a day (mon, tue, ... sun)")),
    })
}

/// Fill `{{constants.x}}` / `{{params.x}}` / `{{tool}}` / `{{action}}` in a rule message.
pub fn render(template: &str, facts: &Facts<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = rest[start + 2..start + end].trim();
        let value = operand(key).and_then(|op| resolve(&op, facts).ok().map(|v| v.into_owned()));
        match value {
            Some(Value::String(s)) => out.push_str(&s),
            Some(v) => out.push_str(&v.to_string()),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts<'a>(params: &'a Map<String, Value>, constants: &'a Value, cel: &'a CelShared) -> Facts<'a> {
        Facts {
            tool: "betfair",
            action: "placeBet",
            params,
            tenant: Some("acme"),
            session: None,
            now: jiff::Timestamp::UNIX_EPOCH,
            constants,
            cel,
            cel_params: Default::default(),
        }
    }

    #[test]
    fn simple_comparisons_take_the_fast_path_and_agree_with_cel() {
        let params = json!({"amount": 1500.0, "market": {"id": "m1"}, "n": 1000}).as_object().unwrap().clone();
        let constants = json!({"max_bet_amount": 1000});
        let cel = CelShared::new(&constants).unwrap();
        let f = facts(&params, &constants, &cel);
        let cases = [
            ("params.amount > constants.max_bet_amount", true),
            ("params.n > 1000", false),
            ("params.n >= 1000.0", true),
            ("params.n == 1000.0", true),
            ("1000.0 > 1000", false),
            ("params.market.id == 'm1'", true),
            ("tool != \"betfair\"", false),
            ("tenant == 'acme'", true),
            ("params.amount < -5", false),
        ];
        for (src, want) in cases {
            let fast = Condition::compile(src).unwrap();
            assert!(matches!(fast, Condition::Native(Native::Compare { .. })), "{src} should be native");
            assert_eq!(fast.eval(&f), Ok(want), "{src}");
            let slow = cel::Program::compile(src).unwrap();
            assert_eq!(eval_cel(&slow, &f), Ok(want), "CEL disagrees on {src}");
        }
    }

    #[test]
    fn in_has_and_boolean_combinations_are_native_and_agree_with_cel() {
        let params = json!({"amount": 250, "odds": 2.5, "market": "m-42", "side": "back", "inner": {"k": 1}})
            .as_object()
            .unwrap()
            .clone();
        let constants = json!({"max": 1000, "limits": {"x": 1}});
        let cel = CelShared::new(&constants).unwrap();
        let f = facts(&params, &constants, &cel);
        let cases = [
            "params.amount > 900 && params.odds > 50.0",
            "params.amount > 100 && params.odds > 2.0",
            "params.amount > 900 || params.odds > 2.0",
            "params.amount > 900 || params.odds > 50.0 || tenant == 'acme'",
            "params.market in ['x1', 'm-42', 'x3']",
            "params.market in ['x1', 'x2']",
            "params.amount in [1, 250.0]",
            "params.amount in []",
            "has(params.side) && params.side == 'lay'",
            "has(params.nope)",
            "has(params.inner.k)",
            "has(constants.limits.y)",
            "has(constants.max)",
            "params.market == 'a && b' || action == 'placeBet'",
            "params.missing > 1 || params.amount > 1",
            "params.amount > 1000 && params.missing > 1",
        ];
        // Arithmetic on JSON integers works as users expect (ints, not uints).
        let sum = Condition::compile("params.amount + 1 == 251 && constants.max - 1 == 999").unwrap();
        assert!(matches!(sum, Condition::Cel(_)));
        assert_eq!(sum.eval(&f), Ok(true));
        for src in cases {
            let fast = Condition::compile(src).unwrap();
            assert!(matches!(fast, Condition::Native(_)), "{src} should be native");
            let slow = cel::Program::compile(src).unwrap();
            assert_eq!(fast.eval(&f), eval_cel(&slow, &f), "native and CEL disagree on {src}");
        }
        // Errors where CEL errors too (fail closed): a missing field decides nothing.
        for src in [
            "params.missing > 1 && params.amount > 1",
            "params.missing > 1 || params.amount > 1000",
            "has(params.nope.x)",
        ] {
            let fast = Condition::compile(src).unwrap();
            assert!(matches!(fast, Condition::Native(_)), "{src} should be native");
            assert!(fast.eval(&f).is_err(), "{src}");
            assert!(eval_cel(&cel::Program::compile(src).unwrap(), &f).is_err(), "CEL on {src}");
        }
        // Parentheses, negation, arithmetic and functions stay with CEL.
        for src in [
            "(params.amount > 1)",
            "!has(params.side)",
            "params.amount * 2 > 1",
            "size(params.market) > 1",
            "params.market in params.list",
        ] {
            assert!(matches!(Condition::compile(src).unwrap(), Condition::Cel(_)), "{src}");
        }
    }

    #[test]
    fn other_expressions_use_cel_and_errors_are_errors() {
        let params = json!({"amount": 10, "tags": ["a"]}).as_object().unwrap().clone();
        let constants = json!({});
        let cel = CelShared::new(&constants).unwrap();
        let f = facts(&params, &constants, &cel);
        for (src, want) in [
            ("!(params.amount > 5 && action == 'placeBet')", false),
            ("'a' in params.tags", true),
            ("size(params.tags) == 2", false),
        ] {
            let c = Condition::compile(src).unwrap();
            assert!(matches!(c, Condition::Cel(_)), "{src}");
            assert_eq!(c.eval(&f), Ok(want), "{src}");
        }
        assert!(Condition::compile("params.missing > 1").unwrap().eval(&f).is_err());
        assert!(Condition::compile("params.amount > 'x'").unwrap().eval(&f).is_err());
        assert!(Condition::compile("params.amount +").is_err());
        assert!(Condition::compile("session == 'x'").unwrap().eval(&f).is_err());
    }

    #[test]
    fn windows_follow_the_local_clock_across_dst() {
        let spec = WindowSpec {
            days: Some(vec!["mon".into(), "tue".into(), "wed".into(), "thu".into(), "fri".into()]),
            from: "09:00".into(),
            to: "17:30".into(),
            timezone: "Europe/London".into(),
        };
        let w = Window::compile(&spec).unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        // Friday 27 March 2026, GMT (UTC+0): 08:30Z is 08:30 local, before opening.
        assert!(!w.contains(at("2026-03-27T08:30:00Z")));
        assert!(w.contains(at("2026-03-27T09:00:00Z")));
        // Monday 30 March 2026, BST (UTC+1) after the change on the 29th: 08:30Z is 09:30 local.
        assert!(w.contains(at("2026-03-30T08:30:00Z")));
        // 16:30Z is 17:30 local: the end is exclusive.
        assert!(!w.contains(at("2026-03-30T16:30:00Z")));
        assert!(w.contains(at("2026-03-30T16:29:59Z")));
        // Weekend.
        assert!(!w.contains(at("2026-03-28T12:00:00Z")));
        // Across midnight: 22:00-02:00, Fridays only; Saturday 01:00 belongs to Friday's window.
        let night = Window::compile(&WindowSpec {
            days: Some(vec!["fri".into()]),
            from: "22:00".into(),
            to: "02:00".into(),
            timezone: "UTC".into(),
        })
        .unwrap();
        assert!(night.contains(at("2026-03-28T01:00:00Z")));
        assert!(!night.contains(at("2026-03-27T01:00:00Z")));
        assert!(
            Window::compile(&WindowSpec { days: None, from: "9".into(), to: "10:00".into(), timezone: "UTC".into() })
                .is_err()
        );
        assert!(
            Window::compile(&WindowSpec {
                days: None,
                from: "09:00".into(),
                to: "10:00".into(),
                timezone: "Mars/Olympus".into()
            })
            .is_err()
        );
    }

    #[test]
    fn messages_are_rendered() {
        let params = json!({"amount": 1500}).as_object().unwrap().clone();
        let constants = json!({"max_bet_amount": 1000});
        let cel = CelShared::new(&constants).unwrap();
        let f = facts(&params, &constants, &cel);
        assert_eq!(
            render("bets above {{constants.max_bet_amount}} are not allowed ({{ params.amount }}, {{nope}})", &f),
            "bets above 1000 are not allowed (1500, {{nope}})"
        );
    }
}
