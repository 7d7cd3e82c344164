//! `${{ }}` expressions in workflow values (docs/design.md §7).
//!
//! A workflow's `args`, `if`, `outputs` and `set_state` hold JSON values whose strings may
//! contain `${{ <CEL expression> }}`:
//!
//! - a string that is exactly one expression (whitespace around it allowed) evaluates to the
//!   expression's value with its JSON type: `"${{ steps.stock.output.count + 100 }}"` is a
//!   number, `"${{ inputs.tags }}"` a list;
//! - a string mixing text and expressions is interpolated as text: strings raw, other values
//!   as compact JSON (`"sku ${{ inputs.sku }} x${{ inputs.n }}"` → `"sku A-1 x3"`);
//! - a string without `${{` is a literal.
//!
//! `${{` always starts an expression: there is no escape, and an unterminated `${{` is a
//! compile error. An expression ends at the first `}}` outside CEL string literals and
//! outside braces opened in the expression, so map literals (`${{ {'a': {'b': 1}} }}`) and
//! strings containing `}}` work.
//!
//! Expressions see five variables: `inputs`, `steps` (step id → `{output, status, error}`),
//! `state` (session state), `constants` (the config's `business_rules`) and `execution`
//! (`{id, tenant, session, workflow}`). Any other free identifier is a compile error, and
//! `steps` may only be read through a step id — `steps.<id>` or `steps['<id>']` — so that
//! [`Template::referenced_steps`] is exact and the validator can check that a step reads only
//! the steps it depends on.
//!
//! Numbers keep their JSON form: JSON integers become CEL `int`s (`uint` beyond `i64`),
//! decimals `double`s, and a `double` result stays a decimal (`1.0`, not `1`). Results
//! without a JSON form fail: NaN and infinities, types other than the JSON ones. `bytes`
//! become base64 strings, CEL type values (`type(x)`) their name. Map keys of the result
//! are strings (CEL `int`/`uint`/`bool` keys written as text), sorted.
//!
//! Limits (hostile input): at most [`MAX_EXPRESSIONS`] expressions per template, each at
//! most [`MAX_EXPRESSION_LEN`] bytes and [`MAX_EXPRESSION_DEPTH`] levels of syntax tree;
//! templates and the values expressions read or produce nest at most [`MAX_DEPTH`] levels.
//! Finding the expressions is one linear pass; each distinct expression is then parsed by
//! CEL once, on a compiler thread with a large stack (CEL's parser recurses deeply), so
//! that evaluation, bounded by those limits, is safe on any thread.
//!
//! Evaluation converts only the variables an expression reads, once per [`Scope`], and
//! `steps` one step at a time; strings are borrowed, not copied, into CEL.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, OnceLock};

use base64::Engine as _;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelBytes, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelType, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use serde_json::{Map, Number, Value};

/// Most expressions one template (or condition) may hold.
pub const MAX_EXPRESSIONS: usize = 1000;
/// Longest expression source, in bytes, between `${{` and `}}`.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Deepest nesting of a template, and of any value an expression reads or produces.
pub const MAX_DEPTH: usize = 64;
/// Deepest nesting of one expression's syntax tree (`a + b + c` is 3 deep): CEL evaluates
/// recursively, and a debug build spends tens of kilobytes of stack a level.
pub const MAX_EXPRESSION_DEPTH: usize = 32;
/// CEL's parser recurses deeply (about 20 nested parentheses exhaust a 2 MiB stack in a
/// debug build; it stops itself at 96 levels): compilation runs on a thread with this much
/// stack, twice what the deepest sources of [`MAX_EXPRESSION_LEN`] bytes need in a debug
/// build (reserved address space, committed only as used).
const COMPILE_STACK: usize = 64 << 20;

/// The variables expressions see, in the order of [`Refs::roots`] bits.
const VARIABLES: [&str; 5] = ["inputs", "steps", "state", "constants", "execution"];
const STEPS: u8 = 1 << 1;

/// One standard-library environment shared by every evaluation: building one costs more
/// than most evaluations.
static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

// ---------------------------------------------------------------------------------------
// Compiled expressions and templates
// ---------------------------------------------------------------------------------------

/// One compiled expression, shared by every place of a template where the same source
/// appears.
#[derive(Debug)]
struct Compiled {
    source: Box<str>,
    program: cel::Program,
    refs: Refs,
}

/// What an expression reads: root variables (bits over [`VARIABLES`]) and step ids.
#[derive(Debug, Default, Clone)]
struct Refs {
    roots: u8,
    steps: BTreeSet<String>,
}

impl Refs {
    fn add(&mut self, other: &Refs) {
        self.roots |= other.roots;
        self.steps.extend(other.steps.iter().cloned());
    }

    fn variables(&self) -> Vec<String> {
        VARIABLES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.roots & (1 << i) != 0)
            .map(|(_, v)| (*v).to_string())
            .collect()
    }
}

#[derive(Debug)]
enum Node {
    /// No expression anywhere below: evaluates to a clone.
    Literal(Value),
    /// A string that is exactly one expression: its value, with its JSON type.
    Whole {
        expr: Arc<Compiled>,
        at: Box<str>,
    },
    /// A string mixing text and expressions: text.
    Text {
        parts: Vec<Part>,
        at: Box<str>,
    },
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

#[derive(Debug)]
enum Part {
    Text(Box<str>),
    Expr(Arc<Compiled>),
}

#[derive(Debug)]
struct Inner {
    root: Node,
    refs: Refs,
    expressions: usize,
}

/// A JSON value with `${{ }}` expressions compiled: evaluate many times, cheaply.
///
/// `Send + Sync`; cloning shares the compiled form.
#[derive(Debug, Clone)]
pub struct Template {
    inner: Arc<Inner>,
}

impl Template {
    /// Compile `value`; `at` names where it sits for errors, e.g. `"steps.update.args"`:
    /// an error points at the exact field, e.g. `steps.update.args.count: invalid
    /// expression `steps.stock.output.count +`: ...`.
    ///
    /// A value with expressions is compiled on a short-lived thread with a large stack
    /// (CEL's parser recurses deeply): compile once, when the workflow is loaded.
    pub fn compile(value: &Value, at: &str) -> Result<Template, String> {
        if has_expression(value) {
            on_big_stack(|| Template::compile_here(value, at))
        } else {
            Template::compile_here(value, at)
        }
    }

    fn compile_here(value: &Value, at: &str) -> Result<Template, String> {
        let mut compiler = Compiler::default();
        let mut path = at.to_string();
        let root = compiler.node(value, &mut path, 0)?;
        Ok(Template { inner: Arc::new(Inner { root, refs: compiler.refs, expressions: compiler.count }) })
    }

    /// Whether no expression is present (a literal template evaluates to a clone).
    pub fn is_literal(&self) -> bool {
        self.inner.expressions == 0
    }

    /// The literal parts only: the value with expression-valued strings (whole or
    /// interpolated) removed — object keys dropped, array items kept as `null` — for
    /// validation against a schema before anything runs.
    pub fn literal_skeleton(&self) -> Value {
        fn skeleton(node: &Node) -> Option<Value> {
            match node {
                Node::Literal(v) => Some(v.clone()),
                Node::Whole { .. } | Node::Text { .. } => None,
                Node::Array(items) => {
                    Some(Value::Array(items.iter().map(|i| skeleton(i).unwrap_or(Value::Null)).collect()))
                }
                Node::Object(fields) => {
                    Some(Value::Object(fields.iter().filter_map(|(k, v)| Some((k.clone(), skeleton(v)?))).collect()))
                }
            }
        }
        skeleton(&self.inner.root).unwrap_or(Value::Null)
    }

    /// Step ids read through `steps.<id>` or `steps['<id>']`, sorted (the only ways
    /// expressions may read `steps`).
    pub fn referenced_steps(&self) -> Vec<String> {
        self.inner.refs.steps.iter().cloned().collect()
    }

    /// Root variables referenced, in the order `inputs, steps, state, constants,
    /// execution`, e.g. `["inputs", "steps"]`.
    pub fn referenced_variables(&self) -> Vec<String> {
        self.inner.refs.variables()
    }

    /// The value, with every expression evaluated. Errors name the field and the expression.
    pub fn evaluate(&self, scope: &Scope<'_>) -> Result<Value, String> {
        if let Node::Literal(v) = &self.inner.root {
            return Ok(v.clone());
        }
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.set_variable_resolver(scope);
        eval_node(&self.inner.root, &ctx, scope)
    }
}

/// A compiled `if` condition: one expression, with or without the `${{ }}` wrapper, that
/// must evaluate to a bool.
#[derive(Debug, Clone)]
pub struct Condition {
    expr: Arc<Compiled>,
    at: Arc<str>,
}

impl Condition {
    pub fn compile(source: &str, at: &str) -> Result<Condition, String> {
        on_big_stack(|| Condition::compile_here(source, at))
    }

    fn compile_here(source: &str, at: &str) -> Result<Condition, String> {
        let trimmed = source.trim();
        let mut compiler = Compiler::default();
        let expr = if trimmed.contains("${{") {
            match whole(&split(trimmed).map_err(|e| prefixed(at, &e))?) {
                Some(src) => compiler.expression(src, at)?,
                None => {
                    return Err(prefixed(
                        at,
                        &format!(
                            "a condition is one expression, found text around `${{{{ }}}}` in `{}`",
                            clip(trimmed)
                        ),
                    ));
                }
            }
        } else {
            compiler.expression(trimmed, at)?
        };
        Ok(Condition { expr, at: at.into() })
    }

    pub fn evaluate(&self, scope: &Scope<'_>) -> Result<bool, String> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.set_variable_resolver(scope);
        let value = run(&self.expr, &ctx, scope, &self.at)?;
        if let Some(b) = value.downcast_ref::<CelBool>() {
            return Ok(*b.inner());
        }
        let shown = to_json(&*value, 0).map_or_else(|_| value.get_type().name().to_string(), |v| v.to_string());
        Err(prefixed(
            &self.at,
            &format!("condition `{}` gave {}, not a boolean", clip(&self.expr.source), clip(&shown)),
        ))
    }

    /// Step ids read through `steps.<id>` or `steps['<id>']`, sorted.
    pub fn referenced_steps(&self) -> Vec<String> {
        self.expr.refs.steps.iter().cloned().collect()
    }

    /// Root variables referenced, e.g. `["steps"]`.
    pub fn referenced_variables(&self) -> Vec<String> {
        self.expr.refs.variables()
    }
}

/// Whether any string in `value` holds `${{`, found without recursion.
fn has_expression(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains("${{") => return true,
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    false
}

/// Run `f` (a compilation) on a thread with [`COMPILE_STACK`] bytes of stack.
fn on_big_stack<T: Send>(f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("utp-expr-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, f)
            .map_err(|e| format!("cannot start the expression compiler thread: {e}"))?;
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn prefixed(at: &str, message: &str) -> String {
    if at.is_empty() { message.to_string() } else { format!("{at}: {message}") }
}

/// Expression sources in messages, at most ~120 characters.
fn clip(source: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 120;
    if source.len() <= MAX {
        return source.into();
    }
    let mut end = MAX;
    while !source.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &source[..end]).into()
}

#[derive(Default)]
struct Compiler {
    refs: Refs,
    count: usize,
    /// Same source, same program.
    seen: HashMap<Box<str>, Arc<Compiled>>,
}

impl Compiler {
    fn node(&mut self, value: &Value, path: &mut String, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(prefixed(path, &format!("nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(match value {
            Value::String(s) if s.contains("${{") => {
                let pieces = split(s).map_err(|e| prefixed(path, &e))?;
                match whole(&pieces) {
                    Some(src) => Node::Whole { expr: self.expression(src, path)?, at: path.as_str().into() },
                    None => {
                        let mut parts = Vec::with_capacity(pieces.len());
                        for piece in pieces {
                            parts.push(match piece {
                                Piece::Text(t) => Part::Text(t.into()),
                                Piece::Expr(src) => Part::Expr(self.expression(src, path)?),
                            });
                        }
                        Node::Text { parts, at: path.as_str().into() }
                    }
                }
            }
            Value::Array(items) => {
                let mut nodes = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    let _ = write!(path, "[{i}]");
                    let node = self.node(item, path, depth + 1);
                    path.truncate(len);
                    nodes.push(node?);
                }
                if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                    Node::Literal(value.clone())
                } else {
                    Node::Array(nodes)
                }
            }
            Value::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, item) in map {
                    let len = path.len();
                    push_key(path, key);
                    let node = self.node(item, path, depth + 1);
                    path.truncate(len);
                    fields.push((key.clone(), node?));
                }
                if fields.iter().all(|(_, n)| matches!(n, Node::Literal(_))) {
                    Node::Literal(value.clone())
                } else {
                    Node::Object(fields)
                }
            }
            other => Node::Literal(other.clone()),
        })
    }

    /// Compile one expression's source (without `${{ }}`), or reuse its earlier compilation.
    fn expression(&mut self, source: &str, at: &str) -> Result<Arc<Compiled>, String> {
        self.count += 1;
        if self.count > MAX_EXPRESSIONS {
            return Err(prefixed(at, &format!("too many expressions (at most {MAX_EXPRESSIONS} in one value)")));
        }
        let source = source.trim();
        if source.is_empty() {
            return Err(prefixed(at, "empty expression `${{ }}`"));
        }
        if source.len() > MAX_EXPRESSION_LEN {
            return Err(prefixed(
                at,
                &format!("expression `{}` is {} bytes long (at most {MAX_EXPRESSION_LEN})", clip(source), source.len()),
            ));
        }
        if let Some(done) = self.seen.get(source) {
            self.refs.add(&done.refs);
            return Ok(done.clone());
        }
        let invalid = |why: &str| prefixed(at, &format!("invalid expression `{}`: {why}", clip(source)));
        let program = ENV.compile(source).map_err(|e| invalid(&parse_message(&e)))?;
        let depth = depth(program.expression());
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(invalid(&format!("nested {depth} levels deep (at most {MAX_EXPRESSION_DEPTH})")));
        }
        let mut refs = Refs::default();
        walk(program.expression(), &mut Vec::new(), &mut refs).map_err(|e| invalid(&e))?;
        self.refs.add(&refs);
        let compiled = Arc::new(Compiled { source: source.into(), program, refs });
        self.seen.insert(source.into(), compiled.clone());
        Ok(compiled)
    }
}

/// `a.b`, `a[0]`, `a["odd key"]`.
fn push_key(path: &mut String, key: &str) {
    let ident = !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if ident {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        let _ = write!(path, "[{}]", Value::from(key));
    }
}

/// CEL's parse errors on one line: `1:27: mismatched input...; ...`.
fn parse_message(errors: &cel::ParseErrors) -> String {
    let mut out = String::new();
    for (i, e) in errors.errors.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(out, "{}:{}: {}", e.pos.0, e.pos.1, e.msg);
    }
    if out.is_empty() { errors.to_string() } else { out }
}

#[derive(Debug, PartialEq)]
enum Piece<'s> {
    Text(&'s str),
    Expr(&'s str),
}

/// Split a string into text and `${{ }}` expression sources, in one pass.
fn split(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = 0;
    while let Some(found) = s[rest..].find("${{") {
        let open = rest + found;
        if open > rest {
            pieces.push(Piece::Text(&s[rest..open]));
        }
        let start = open + 3;
        let end = closing(s, start)
            .ok_or_else(|| format!("unterminated `${{{{` at byte {open} of `{}`: expected `}}}}`", clip(&s[open..])))?;
        pieces.push(Piece::Expr(&s[start..end]));
        if pieces.len() > 2 * MAX_EXPRESSIONS + 1 {
            return Err(format!("too many expressions (at most {MAX_EXPRESSIONS} in one value)"));
        }
        rest = end + 2;
    }
    if rest < s.len() {
        pieces.push(Piece::Text(&s[rest..]));
    }
    Ok(pieces)
}

/// The expression, if the pieces are one expression with only whitespace around it.
fn whole<'s>(pieces: &[Piece<'s>]) -> Option<&'s str> {
    let blank = |p: &Piece<'_>| matches!(p, Piece::Text(t) if t.trim().is_empty());
    match pieces {
        [Piece::Expr(e)] => Some(e),
        [a, Piece::Expr(e)] | [Piece::Expr(e), a] if blank(a) => Some(e),
        [a, Piece::Expr(e), b] if blank(a) && blank(b) => Some(e),
        _ => None,
    }
}

/// Where the `}}` closing an expression starting at `start` is: the first one outside
/// string literals and outside braces the expression opened.
fn closing(s: &str, start: usize) -> Option<usize> {
    let b = s.as_bytes();
    let (mut i, mut depth) = (start, 0usize);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                let raw = i > start && matches!(b[i - 1], b'r' | b'R')
                    || i > start + 1 && matches!(b[i - 1], b'b' | b'B') && matches!(b[i - 2], b'r' | b'R');
                let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
                i += if triple { 3 } else { 1 };
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\\') if !raw => i += 2,
                        Some(&c) if c == q && (!triple || (b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q))) => {
                            i += if triple { 3 } else { 1 };
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                continue;
            }
            b'{' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// How deep a syntax tree is, measured without recursion.
fn depth<'e>(root: &'e IdedExpr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1usize)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        let mut push = |child: &'e IdedExpr| stack.push((child, d + 1));
        match &e.expr {
            Expr::Select(s) => push(&s.operand),
            Expr::Call(c) => {
                c.target.iter().for_each(|t| push(t));
                c.args.iter().for_each(&mut push);
            }
            Expr::Comprehension(c) => {
                [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result].into_iter().for_each(push);
            }
            Expr::List(l) => l.elements.iter().for_each(push),
            Expr::Map(m) => entries(&m.entries, push),
            Expr::Struct(s) => entries(&s.entries, push),
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    deepest
}

fn entries<'e>(entries: &'e [cel::common::ast::IdedEntryExpr], mut push: impl FnMut(&'e IdedExpr)) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::MapEntry(m) => {
                push(&m.key);
                push(&m.value);
            }
            EntryExpr::StructField(f) => push(&f.value),
        }
    }
}

/// Collect what an expression reads, refusing unknown variables and `steps` read other than
/// through a step id. `bound` holds the comprehension variables in scope.
fn walk(e: &IdedExpr, bound: &mut Vec<String>, refs: &mut Refs) -> Result<(), String> {
    let free_steps =
        |e: &IdedExpr, bound: &Vec<String>| matches!(&e.expr, Expr::Ident(n) if n == "steps" && !bound.contains(n));
    match &e.expr {
        Expr::Ident(name) => {
            if bound.contains(name) {
                return Ok(());
            }
            match VARIABLES.iter().position(|v| v == name) {
                Some(1) => {
                    return Err("`steps` is read through a step id: `steps.<id>` or `steps['<id>']`".to_string());
                }
                Some(i) => refs.roots |= 1 << i,
                None if ENV.types().find_type(name).is_some() => {}
                None => {
                    return Err(format!(
                        "unknown variable `{name}` (expressions see inputs, steps, state, constants, execution)"
                    ));
                }
            }
        }
        Expr::Select(select) => {
            if free_steps(&select.operand, bound) {
                refs.roots |= STEPS;
                refs.steps.insert(select.field.clone());
            } else {
                walk(&select.operand, bound, refs)?;
            }
        }
        Expr::Call(call) => {
            if call.target.is_none() && call.func_name == "_[_]" {
                if let [container, key] = call.args.as_slice() {
                    if free_steps(container, bound) {
                        let Expr::Literal(LiteralValue::String(id)) = &key.expr else {
                            return Err("`steps` is indexed by a literal step id: `steps['<id>']`".to_string());
                        };
                        refs.roots |= STEPS;
                        refs.steps.insert(id.inner().to_string());
                        return Ok(());
                    }
                }
            }
            if let Some(target) = &call.target {
                walk(target, bound, refs)?;
            }
            for arg in &call.args {
                walk(arg, bound, refs)?;
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound, refs)?;
            walk(&c.accu_init, bound, refs)?;
            let len = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            let inner = [&c.loop_cond, &c.loop_step, &c.result].into_iter().try_for_each(|x| walk(x, bound, refs));
            bound.truncate(len);
            inner?;
        }
        Expr::List(list) => {
            for item in &list.elements {
                walk(item, bound, refs)?;
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        walk(&m.key, bound, refs)?;
                        walk(&m.value, bound, refs)?;
                    }
                    EntryExpr::StructField(f) => walk(&f.value, bound, refs)?,
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        walk(&m.key, bound, refs)?;
                        walk(&m.value, bound, refs)?;
                    }
                    EntryExpr::StructField(f) => walk(&f.value, bound, refs)?,
                }
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

fn run<'e, 'v>(
    expr: &'e Compiled,
    ctx: &'e cel::Context<'_, 'v>,
    scope: &Scope<'_>,
    at: &str,
) -> Result<CowVal<'e, 'v>, String> {
    cel::Value::resolve_val(expr.program.expression(), ctx).map_err(|e| {
        // A variable that could not be converted reads as undeclared: say why instead.
        let unconverted =
            matches!(&e, cel::ExecutionError::UndeclaredReference(name) if VARIABLES.contains(&name.as_str()));
        let why = unconverted.then(|| scope.conversion_error()).flatten().unwrap_or_else(|| e.to_string());
        prefixed(at, &format!("expression `{}` failed: {why}", clip(&expr.source)))
    })
}

fn eval_node(node: &Node, ctx: &cel::Context<'_, '_>, scope: &Scope<'_>) -> Result<Value, String> {
    match node {
        Node::Literal(v) => Ok(v.clone()),
        Node::Whole { expr, at } => {
            let value = run(expr, ctx, scope, at)?;
            to_json(&*value, 0).map_err(|e| prefixed(at, &format!("expression `{}` {e}", clip(&expr.source))))
        }
        Node::Text { parts, at } => {
            let mut out = String::new();
            for part in parts {
                match part {
                    Part::Text(t) => out.push_str(t),
                    Part::Expr(expr) => {
                        let value = run(expr, ctx, scope, at)?;
                        if let Some(s) = value.downcast_ref::<CelString>() {
                            out.push_str(s.inner());
                        } else {
                            let json = to_json(&*value, 0)
                                .map_err(|e| prefixed(at, &format!("expression `{}` {e}", clip(&expr.source))))?;
                            let _ = write!(out, "{json}");
                        }
                    }
                }
            }
            Ok(Value::String(out))
        }
        Node::Array(items) => {
            items.iter().map(|i| eval_node(i, ctx, scope)).collect::<Result<_, _>>().map(Value::Array)
        }
        Node::Object(fields) => {
            let mut map = Map::with_capacity(fields.len());
            for (k, v) in fields {
                map.insert(k.clone(), eval_node(v, ctx, scope)?);
            }
            Ok(Value::Object(map))
        }
    }
}

/// A CEL value as JSON; the error completes "expression `...` ".
fn to_json(v: &dyn Val, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("gave a value nested deeper than {MAX_DEPTH} levels"));
    }
    if let Some(s) = v.downcast_ref::<CelString>() {
        return Ok(Value::String(s.inner().to_string()));
    }
    if let Some(i) = v.downcast_ref::<CelInt>() {
        return Ok(Value::from(*i.inner()));
    }
    if let Some(u) = v.downcast_ref::<CelUInt>() {
        return Ok(Value::from(*u.inner()));
    }
    if let Some(d) = v.downcast_ref::<CelDouble>() {
        return Number::from_f64(*d.inner())
            .map(Value::Number)
            .ok_or_else(|| format!("gave {}, which JSON cannot represent", d.inner()));
    }
    if let Some(b) = v.downcast_ref::<CelBool>() {
        return Ok(Value::Bool(*b.inner()));
    }
    if v.downcast_ref::<CelNull>().is_some() {
        return Ok(Value::Null);
    }
    if let Some(list) = v.downcast_ref::<CelList>() {
        return list.inner().iter().map(|i| to_json(i.as_ref(), depth + 1)).collect::<Result<_, _>>().map(Value::Array);
    }
    if let Some(map) = v.downcast_ref::<CelMap>() {
        let mut entries = Vec::with_capacity(map.inner().len());
        for (k, item) in map.inner() {
            let key = match k {
                CelMapKey::String(s) => s.inner().to_string(),
                CelMapKey::Int(i) => i.inner().to_string(),
                CelMapKey::UInt(u) => u.inner().to_string(),
                CelMapKey::Bool(b) => b.inner().to_string(),
            };
            entries.push((key, to_json(item.as_ref(), depth + 1)?));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("gave a map with the key `{}` twice once keys are strings", w[0].0));
        }
        return Ok(Value::Object(entries.into_iter().collect()));
    }
    if let Some(b) = v.downcast_ref::<CelBytes>() {
        return Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(b.inner())));
    }
    if let Some(t) = v.downcast_ref::<CelType>() {
        return Ok(Value::String(t.name().to_string()));
    }
    Err(format!("gave a value of type `{}`, which has no JSON form", v.get_type().name()))
}

/// JSON as a CEL value; strings borrow from the JSON.
fn to_val<'a>(value: &'a Value, depth: usize) -> Result<Box<dyn Val + 'a>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match value {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().ok_or("a number out of range")?)),
        },
        Value::String(s) => Box::new(CelString::from(s.as_str())),
        Value::Array(items) => {
            Box::new(CelList::from(items.iter().map(|i| to_val(i, depth + 1)).collect::<Result<Vec<_>, _>>()?))
        }
        Value::Object(map) => {
            let mut entries = HashMap::with_capacity(map.len());
            for (k, v) in map {
                entries.insert(CelMapKey::from(k.as_str()), to_val(v, depth + 1)?);
            }
            Box::new(CelMap::from(entries))
        }
    })
}

// ---------------------------------------------------------------------------------------
// Scope
// ---------------------------------------------------------------------------------------

type Cell<'a> = OnceLock<Result<Box<dyn Val + 'a>, String>>;

/// What expressions see. Borrowed JSON, converted to CEL lazily — only the variables an
/// expression reads, each at most once per `Scope` — and `steps` one step at a time:
/// `steps.stock.output.count` converts step `stock` only.
pub struct Scope<'a> {
    /// `inputs`, `steps` (whole), `state`, `constants`, `execution`.
    values: [&'a Value; 5],
    cells: [Cell<'a>; 5],
    /// Step id, its entry, its CEL value; sorted by id; built on the first `steps.<id>`.
    steps: OnceLock<Vec<(&'a str, &'a Value, Cell<'a>)>>,
}

impl<'a> Scope<'a> {
    pub fn new(
        inputs: &'a Value,
        steps: &'a Value,
        state: &'a Value,
        constants: &'a Value,
        execution: &'a Value,
    ) -> Scope<'a> {
        Scope {
            values: [inputs, steps, state, constants, execution],
            cells: Default::default(),
            steps: OnceLock::new(),
        }
    }

    fn variable(&self, i: usize) -> Option<&(dyn Val + 'a)> {
        self.cells[i]
            .get_or_init(|| to_val(self.values[i], 0).map_err(|e| format!("{}: {e}", VARIABLES[i])))
            .as_deref()
            .ok()
    }

    fn step(&self, id: &str) -> Option<&(dyn Val + 'a)> {
        let steps = self.steps.get_or_init(|| {
            let mut steps: Vec<_> = match self.values[1] {
                Value::Object(map) => map.iter().map(|(k, v)| (k.as_str(), v, OnceLock::new())).collect(),
                _ => Vec::new(),
            };
            steps.sort_unstable_by(|a, b| a.0.cmp(b.0));
            steps
        });
        let (_, value, cell) = &steps[steps.binary_search_by(|s| s.0.cmp(id)).ok()?];
        cell.get_or_init(|| to_val(value, 1).map_err(|e| format!("steps.{id}: {e}"))).as_deref().ok()
    }

    /// Why a variable could not be converted, if one could not (it then reads as undeclared).
    fn conversion_error(&self) -> Option<String> {
        let failed = |cell: &Cell<'a>| cell.get().and_then(|r| r.as_ref().err().cloned());
        self.cells.iter().find_map(failed).or_else(|| self.steps.get()?.iter().find_map(|(_, _, cell)| failed(cell)))
    }
}

impl VariableResolver for Scope<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        // CEL asks for `steps.stock.output.count`, then `steps.stock.output`, `steps.stock`,
        // `steps`: answering `steps.<id>` converts that step only.
        if let Some(id) = variable.strip_prefix("steps.") {
            return if id.contains('.') { None } else { self.step(id).map(CowVal::Borrowed) };
        }
        let i = VARIABLES.iter().position(|v| *v == variable)?;
        self.variable(i).map(CowVal::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Vars {
        inputs: Value,
        steps: Value,
        state: Value,
        constants: Value,
        execution: Value,
    }

    fn vars() -> Vars {
        Vars {
            inputs: json!({"sku": "A-1", "n": 3, "tags": ["x", "y"], "price": 2.5, "big": u64::MAX, "min": i64::MIN}),
            steps: json!({
                "stock": {"output": {"count": 7, "ratio": 1.0, "items": [1, 2]}, "status": "succeeded", "error": null},
                "a": {"output": {"x": 1}, "status": "succeeded", "error": null},
                "send-mail": {"output": "sent", "status": "succeeded", "error": null},
            }),
            state: json!({"x": "hello", "nested": {"deep": true}}),
            constants: json!({"max": 100}),
            execution: json!({"id": "e1", "tenant": "t", "session": "s", "workflow": "restock"}),
        }
    }

    impl Vars {
        fn scope(&self) -> Scope<'_> {
            Scope::new(&self.inputs, &self.steps, &self.state, &self.constants, &self.execution)
        }
    }

    fn eval(template: Value) -> Result<Value, String> {
        let v = vars();
        Template::compile(&template, "t")?.evaluate(&v.scope())
    }

    fn one(source: &str) -> Value {
        eval(Value::String(source.to_string())).unwrap()
    }

    #[test]
    fn whole_string_expression_keeps_its_type() {
        assert_eq!(one("${{ inputs.n }}"), json!(3));
        assert_eq!(one("${{ inputs.price }}"), json!(2.5));
        assert_eq!(one("${{ steps.stock.output.ratio }}"), json!(1.0));
        assert!(one("${{ steps.stock.output.ratio }}").is_f64());
        assert_eq!(one("${{ 2.0 * 3.0 }}").to_string(), "6.0");
        assert_eq!(one("${{ inputs.n > 2 }}"), json!(true));
        assert_eq!(one("${{ inputs.tags }}"), json!(["x", "y"]));
        assert_eq!(one("${{ state.nested }}"), json!({"deep": true}));
        assert_eq!(one("${{ null }}"), Value::Null);
        assert_eq!(one("${{ inputs.sku }}"), json!("A-1"));
        assert_eq!(one("  ${{inputs.sku}}\n"), json!("A-1"));
        assert_eq!(one("${{ {'b': 1, 'a': [true, 2u]} }}"), json!({"a": [true, 2], "b": 1}));
        assert_eq!(one("${{ b'hi' }}"), json!("aGk="));
        assert_eq!(one("${{ type(1) }}"), json!("int"));
    }

    #[test]
    fn interpolation() {
        assert_eq!(one("sku ${{ inputs.sku }} x${{ inputs.n }}"), json!("sku A-1 x3"));
        assert_eq!(
            one("tags=${{ inputs.tags }} ok=${{ true }} none=${{ null }}"),
            json!(r#"tags=["x","y"] ok=true none=null"#)
        );
        assert_eq!(one("${{ inputs.sku }}${{ inputs.n }}"), json!("A-13"));
        assert_eq!(one("r=${{ steps.stock.output.ratio }}"), json!("r=1.0"));
        assert_eq!(one("${{ 'a' }} and ${{ 'b' }}"), json!("a and b"));
        assert_eq!(one("a ${{ '}}' }} b"), json!("a }} b"));
        assert_eq!(one("plain text, no expression"), json!("plain text, no expression"));
        assert_eq!(one("$ { { not one }} ${ {"), json!("$ { { not one }} ${ {"));
        assert_eq!(
            one("héllo ✓ ${{ inputs.sku }} 日本語 ${{ '→' + state.x }} 🎉"),
            json!("héllo ✓ A-1 日本語 →hello 🎉")
        );
    }

    #[test]
    fn nested_objects_and_arrays() {
        let out = eval(json!({
            "sku": "${{ inputs.sku }}",
            "count": "${{ steps.stock.output.count + 100 }}",
            "fixed": {"a": 1, "b": [1, "two"]},
            "row": ["${{ inputs.sku }}", 5, {"deep": ["${{ state.x }}", "lit"]}],
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({"sku": "A-1", "count": 107, "fixed": {"a": 1, "b": [1, "two"]}, "row": ["A-1", 5, {"deep": ["hello", "lit"]}]})
        );
        // field order is kept
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["sku", "count", "fixed", "row"]);
    }

    #[test]
    fn variables() {
        assert_eq!(one("${{ steps.stock.output.count + 100 }}"), json!(107));
        assert_eq!(one("${{ inputs.sku }}"), json!("A-1"));
        assert_eq!(one("${{ state.x }}"), json!("hello"));
        assert_eq!(one("${{ constants.max }}"), json!(100));
        assert_eq!(one("${{ execution.workflow + '/' + execution.id }}"), json!("restock/e1"));
        assert_eq!(one("${{ has(steps.a.output.x) }}"), json!(true));
        assert_eq!(one("${{ has(steps.a.output.y) }}"), json!(false));
        assert_eq!(one("${{ steps['send-mail'].output }}"), json!("sent"));
        assert_eq!(one("${{ steps.stock.output.items.map(i, i * 10) }}"), json!([10, 20]));
        assert_eq!(one("${{ steps.stock.output.count < constants.max && state.nested.deep }}"), json!(true));
    }

    #[test]
    fn integer_edges() {
        assert_eq!(one("${{ inputs.big }}"), json!(u64::MAX));
        assert_eq!(one("${{ inputs.min }}"), json!(i64::MIN));
        assert_eq!(one("${{ inputs.big - 1u }}"), json!(u64::MAX - 1));
        assert_eq!(one("${{ 9223372036854775807 }}"), json!(i64::MAX));
        assert_eq!(one("${{ 18446744073709551615u }}"), json!(u64::MAX));
        let err = eval(json!("${{ inputs.min - 1 }}")).unwrap_err();
        assert!(err.starts_with("t: expression `inputs.min - 1` failed:") && err.contains("verflow"), "{err}");
        let err = eval(json!("${{ 1.0 / 0.0 }}")).unwrap_err();
        assert!(err.contains("JSON cannot represent"), "{err}");
        // positive JSON integers are ints, so int arithmetic works on them
        assert_eq!(one("${{ inputs.n * -1 }}"), json!(-3));
    }

    #[test]
    fn conditions() {
        let v = vars();
        let scope = v.scope();
        let c = Condition::compile("steps.stock.output.count < 10", "steps.update.if").unwrap();
        assert!(c.evaluate(&scope).unwrap());
        assert_eq!(c.referenced_steps(), ["stock"]);
        assert_eq!(c.referenced_variables(), ["steps"]);
        let c = Condition::compile("${{ inputs.n > constants.max }}", "if").unwrap();
        assert!(!c.evaluate(&scope).unwrap());
        let c = Condition::compile(" ${{ inputs.n }} ", "steps.x.if").unwrap();
        assert_eq!(c.evaluate(&scope).unwrap_err(), "steps.x.if: condition `inputs.n` gave 3, not a boolean");
        let err = Condition::compile("a ${{ true }}", "steps.x.if").unwrap_err();
        assert!(err.starts_with("steps.x.if: a condition is one expression"), "{err}");
        let err = Condition::compile("inputs.n >", "steps.x.if").unwrap_err();
        assert!(err.starts_with("steps.x.if: invalid expression `inputs.n >`: "), "{err}");
        assert!(Condition::compile("", "if").unwrap_err().contains("empty expression"));
    }

    #[test]
    fn evaluation_errors_name_the_field_and_expression() {
        let err = eval(json!({"args": {"count": "${{ steps.stock.output.nope + 1 }}"}})).unwrap_err();
        assert_eq!(err, "t.args.count: expression `steps.stock.output.nope + 1` failed: No such key: nope");
        let err = eval(json!({"row": [1, "x ${{ inputs.missing }}"]})).unwrap_err();
        assert_eq!(err, "t.row[1]: expression `inputs.missing` failed: No such key: missing");
        // a step that has not run is missing from `steps`
        let err = eval(json!({"a": "${{ steps.later.output }}"})).unwrap_err();
        assert_eq!(err, "t.a: expression `steps.later.output` failed: No such key: later");
        let err = eval(json!({"odd key": "${{ inputs.n + 'x' }}"})).unwrap_err();
        assert!(err.starts_with(r#"t["odd key"]: expression `inputs.n + 'x'` failed: "#), "{err}");
    }

    #[test]
    fn compile_errors_name_the_field() {
        let err =
            Template::compile(&json!({"count": "${{ steps.stock.output.count + }}"}), "steps.update.args").unwrap_err();
        assert!(err.starts_with("steps.update.args.count: invalid expression `steps.stock.output.count +`: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Template::compile(&json!({"a": ["ok", "x ${{ inputs.sku "]}), "steps.s.args").unwrap_err();
        assert!(err.starts_with("steps.s.args.a[1]: unterminated `${{` at byte 2"), "{err}");
        let err = Template::compile(&json!("${{ '}}' "), "o").unwrap_err();
        assert!(err.starts_with("o: unterminated"), "{err}");
        let err = Template::compile(&json!({"x": "${{ }}"}), "o").unwrap_err();
        assert_eq!(err, "o.x: empty expression `${{ }}`");
        let err = Template::compile(&json!({"x": "${{ input.sku }}"}), "o").unwrap_err();
        assert_eq!(
            err,
            "o.x: invalid expression `input.sku`: unknown variable `input` (expressions see inputs, steps, state, constants, execution)"
        );
        let err = Template::compile(&json!("${{ size(steps) }}"), "o").unwrap_err();
        assert!(err.contains("`steps` is read through a step id"), "{err}");
        let err = Template::compile(&json!("${{ steps[inputs.sku] }}"), "o").unwrap_err();
        assert!(err.contains("literal step id"), "{err}");
        // an empty `at`: the path starts at the field
        let err = Template::compile(&json!({"x": "${{ 1 + }}"}), "").unwrap_err();
        assert!(err.starts_with("x: invalid expression"), "{err}");
    }

    #[test]
    fn literal_skeleton() {
        let t = Template::compile(
            &json!({"sku": "${{ inputs.sku }}", "n": 5, "label": "n=${{ inputs.n }}", "row": ["${{ state.x }}", 1, {"a": "${{ state.x }}", "b": 2}], "lit": "plain"}),
            "args",
        )
        .unwrap();
        assert!(!t.is_literal());
        assert_eq!(t.literal_skeleton(), json!({"n": 5, "row": [null, 1, {"b": 2}], "lit": "plain"}));
        let lit = json!({"a": [1, {"b": "c"}]});
        let t = Template::compile(&lit, "args").unwrap();
        assert!(t.is_literal());
        assert_eq!(t.literal_skeleton(), lit);
        assert_eq!(t.evaluate(&vars().scope()).unwrap(), lit);
        assert_eq!(Template::compile(&json!("${{ 1 }}"), "x").unwrap().literal_skeleton(), Value::Null);
    }

    #[test]
    fn referenced_steps_and_variables() {
        let t = Template::compile(
            &json!({
                "a": "${{ steps.stock.output.count + constants.max }}",
                "b": "${{ has(steps.a.output.x) ? steps['send-mail'].output : inputs.sku }}",
                "c": ["${{ [1, 2].exists(steps, steps > 1) }}", "${{ steps.stock.status }}"],
                "d": "${{ [1].map(x, steps.z.output) }}",
            }),
            "args",
        )
        .unwrap();
        assert_eq!(t.referenced_steps(), ["a", "send-mail", "stock", "z"]);
        assert_eq!(t.referenced_variables(), ["inputs", "steps", "constants"]);
        let t = Template::compile(&json!("${{ state.x + execution.id }}"), "x").unwrap();
        assert!(t.referenced_steps().is_empty());
        assert_eq!(t.referenced_variables(), ["state", "execution"]);
        // `has(steps.a)`: a presence test on the step itself
        let t = Template::compile(&json!("${{ has(steps.a) }}"), "x").unwrap();
        assert_eq!(t.referenced_steps(), ["a"]);
        assert_eq!(t.evaluate(&vars().scope()).unwrap(), json!(true));
    }

    #[test]
    fn same_expression_twice_and_two_expressions() {
        let t =
            Template::compile(&json!(["${{ inputs.n }}", "${{ inputs.n }}", "${{inputs.n}}-${{ inputs.sku }}"]), "x")
                .unwrap();
        assert_eq!(t.evaluate(&vars().scope()).unwrap(), json!([3, 3, "3-A-1"]));
    }

    #[test]
    fn a_scope_converts_once_and_serves_many_evaluations() {
        let v = vars();
        let scope = v.scope();
        let t =
            Template::compile(&json!({"a": "${{ steps.stock.output.count }}", "b": "${{ inputs.sku }}"}), "x").unwrap();
        for _ in 0..3 {
            assert_eq!(t.evaluate(&scope).unwrap(), json!({"a": 7, "b": "A-1"}));
        }
        // only what was read was converted
        assert!(scope.cells[0].get().is_some());
        assert!(scope.cells[1].get().is_none(), "whole `steps` untouched");
        assert!(scope.cells[2].get().is_none());
        let steps = scope.steps.get().unwrap();
        let converted: Vec<_> = steps.iter().filter(|s| s.2.get().is_some()).map(|s| s.0).collect();
        assert_eq!(converted, ["stock"]);
    }

    #[test]
    fn a_deep_template_is_refused() {
        let mut deep = json!("${{ inputs.n }}");
        for _ in 0..1000 {
            deep = json!([deep]);
        }
        let err = Template::compile(&deep, "x").unwrap_err();
        assert!(err.starts_with("x[0][0]") && err.ends_with(": nested deeper than 64 levels"), "{}", clip(&err));
    }

    #[test]
    fn a_deep_value_read_by_an_expression_is_refused() {
        let mut value = json!(1);
        for _ in 0..200 {
            value = json!({"a": value});
        }
        let v = vars();
        let scope = Scope::new(&value, &v.steps, &v.state, &v.constants, &v.execution);
        let err = Template::compile(&json!("${{ inputs.a }}"), "x").unwrap().evaluate(&scope).unwrap_err();
        assert_eq!(err, "x: expression `inputs.a` failed: inputs: nested deeper than 64 levels");
    }

    #[test]
    fn many_expressions_in_one_string() {
        let started = std::time::Instant::now();
        // 10k expressions: refused with the limit, before compiling them
        let err = Template::compile(&Value::String("${{ inputs.n }}".repeat(10_000)), "x").unwrap_err();
        assert_eq!(err, "x: too many expressions (at most 1000 in one value)");
        // 10k unterminated openers
        let err = Template::compile(&Value::String("${{".repeat(10_000)), "x").unwrap_err();
        assert!(err.starts_with("x: unterminated `${{` at byte 0"), "{}", clip(&err));
        // 10k openers inside one string literal: one long expression
        let err = Template::compile(&Value::String(format!("${{{{ '{}' }}}}", "${{".repeat(10_000))), "x").unwrap_err();
        assert!(err.contains("is 30002 bytes long (at most 4096)"), "{}", clip(&err));
        // 900 copies of one expression: parsed once, evaluated 900 times
        let same = vec![json!("${{ inputs.n }}"); 900];
        let t = Template::compile(&Value::Array(same), "x").unwrap();
        assert_eq!(t.evaluate(&vars().scope()).unwrap().as_array().unwrap().len(), 900);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn very_long_strings() {
        let v = vars();
        let long = "é".repeat(500_000);
        assert!(Template::compile(&Value::String(long.clone()), "x").unwrap().is_literal());
        let s = format!("${{{{ inputs.sku }}}}{long}${{{{ inputs.n }}}}");
        let out = Template::compile(&Value::String(s), "x").unwrap().evaluate(&v.scope()).unwrap();
        assert_eq!(out.as_str().unwrap().len(), 3 + long.len() + 1);
        let s = format!("{}${{{{ inputs.n }}}}", "}}".repeat(100_000));
        let out = Template::compile(&Value::String(s), "x").unwrap().evaluate(&v.scope()).unwrap();
        assert_eq!(out.as_str().unwrap().len(), 200_001);
    }

    #[test]
    fn deep_expressions_are_refused_not_a_stack_overflow() {
        let v = vars();
        for (source, why) in [
            (format!("{}1{}", "(".repeat(1000), ")".repeat(1000)), "Recursion limit"),
            (format!("{}1{}", "[".repeat(90), "]".repeat(90)), "levels deep (at most 32)"),
            (format!("{}1{}", "string(".repeat(90), ")".repeat(90)), "levels deep (at most 32)"),
            (format!("1{}", " + 1".repeat(1000)), "levels deep (at most 32)"),
            (format!("inputs{}", "[0]".repeat(1000)), "levels deep (at most 32)"),
            // the longest allowed sources, as deep as they can be
            (format!("{}1{}", "[".repeat(2040), "]".repeat(2040)), ""),
            (format!("{}1{}", "{1:".repeat(1020), "}".repeat(1020)), ""),
            (format!("{}1{}", "string(".repeat(500), ")".repeat(500)), ""),
            (format!("{}1{}", "-(".repeat(1020), ")".repeat(1020)), ""),
            (format!("{}1", "true ? 1 : ".repeat(370)), ""),
        ] {
            let err = Template::compile(&Value::String(format!("${{{{ {source} }}}}")), "x").unwrap_err();
            assert!(err.starts_with("x: invalid expression `") && err.contains(why), "{}", clip(&err));
        }
        // just within the limits: evaluated on this (test, 2 MiB) thread
        let t = Template::compile(&Value::String(format!("${{{{ {}1{} }}}}", "(".repeat(90), ")".repeat(90))), "x")
            .unwrap();
        assert_eq!(t.evaluate(&v.scope()).unwrap(), json!(1));
        let t =
            Template::compile(&Value::String(format!("${{{{ 1{} }}}}", " + 1".repeat(MAX_EXPRESSION_DEPTH - 2))), "x")
                .unwrap();
        assert_eq!(t.evaluate(&v.scope()).unwrap(), json!(MAX_EXPRESSION_DEPTH - 1));
        let t = Template::compile(&Value::String(format!("${{{{ {}1{} }}}}", "[".repeat(30), "]".repeat(30))), "x")
            .unwrap();
        assert!(t.evaluate(&v.scope()).is_ok());
        let src = format!("${{{{ {}inputs.n{} }}}}", "inputs.tags.map(x, ".repeat(8), ")".repeat(8));
        let t = Template::compile(&Value::String(src), "x").unwrap();
        assert!(t.evaluate(&v.scope()).is_ok());
        let t = Template::compile(&Value::String(format!("${{{{ {}1 }}}}", "true ? 1 : ".repeat(15))), "x").unwrap();
        assert_eq!(t.evaluate(&v.scope()).unwrap(), json!(1));
        assert!(Template::compile(&Value::String(format!("${{{{ {}1 }}}}", "!".repeat(4000))), "x").is_ok());
    }

    #[test]
    fn splitting() {
        assert_eq!(split("a${{ b }}c").unwrap(), [Piece::Text("a"), Piece::Expr(" b "), Piece::Text("c")]);
        assert_eq!(split("${{ {'a': {'b': 1}} }}}").unwrap(), [Piece::Expr(" {'a': {'b': 1}} "), Piece::Text("}")]);
        assert_eq!(split(r#"${{ "}}\"}}" }}"#).unwrap(), [Piece::Expr(r#" "}}\"}}" "#)]);
        assert_eq!(split(r"${{ r'\' }}").unwrap(), [Piece::Expr(r" r'\' ")]);
        assert_eq!(split("${{ '''a'}}'b''' }}").unwrap(), [Piece::Expr(" '''a'}}'b''' ")]);
        assert!(split("${{ 'open }}").is_err());
    }

    #[test]
    fn bytes_become_standard_base64() {
        for (input, out) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")]
        {
            let t = Template::compile(&json!(format!("${{{{ b'{input}' }}}}")), "x").unwrap();
            assert_eq!(t.evaluate(&vars().scope()).unwrap(), json!(out));
        }
    }

    #[test]
    fn templates_are_send_sync_and_cheap_to_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Template>();
        check::<Condition>();
        fn sync<T: Send + Sync>() {}
        sync::<Scope<'static>>();
        let t = Template::compile(&json!("${{ inputs.n }}"), "x").unwrap();
        assert!(Arc::ptr_eq(&t.clone().inner, &t.inner));
    }
}
