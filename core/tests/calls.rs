//! call_tool for native, cli, text and file tools: validation, variables,
//! timeouts, cancellation, post-processors, and CLI injection attempts run against
//! real subprocesses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::{Value, json};
use utp_core::{CallOptions, CancellationToken, Engine, ErrorCode, ManualSource, NativeHandler};

fn engine(config: Value) -> Engine {
    Engine::from_json(config).unwrap()
}

fn handler(f: impl Fn(Value) -> utp_core::Result<Value> + Send + Sync + 'static) -> NativeHandler {
    let f = Arc::new(f);
    Arc::new(move |args| {
        let f = f.clone();
        async move { f(args) }.boxed()
    })
}

async fn call(e: &Engine, name: &str, args: Value) -> utp_core::Result<Value> {
    e.call_tool(name, args, CallOptions::default()).await
}

#[tokio::test]
async fn native_tool_round_trip_and_validation() {
    let e = engine(json!({}));
    let inputs = json!({"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer", "minimum": 0}, "tag": {"$ref": "#/$defs/Tag"}},
        "required": ["a", "b"], "$defs": {"Tag": {"type": "string", "maxLength": 3}}});
    let name = e
        .register_tool(
            "math.add",
            handler(|v| Ok(json!(v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0)))),
            Some(inputs),
            None,
            "Add",
            vec!["math".into()],
        )
        .unwrap();
    assert_eq!(name, "math.add");
    assert_eq!(call(&e, "math.add", json!({"a": 2, "b": 3})).await.unwrap(), json!(5));
    // A second tool joins the same manual.
    e.register_tool("math.neg", handler(|v| Ok(json!(-v["x"].as_i64().unwrap_or(0)))), None, None, "", vec![]).unwrap();
    assert_eq!(call(&e, "math.neg", json!({"x": 4})).await.unwrap(), json!(-4));
    assert_eq!(call(&e, "math.add", json!({"a": 1, "b": 1})).await.unwrap(), json!(2));

    let err = call(&e, "math.add", json!({"a": "x", "b": -1, "tag": "long"})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    let msg = err.to_string();
    assert!(msg.contains("/a") && msg.contains("/b") && msg.contains("/tag"), "{msg}");
    let err = call(&e, "math.add", json!({"a": 1})).await.unwrap_err();
    assert!(err.to_string().contains("\"b\""), "{err}");
    let err = call(&e, "math.add", json!([1, 2])).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ValidationFailed);
    assert_eq!(call(&e, "math.nope", json!({})).await.unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(call(&e, "nodot", json!({})).await.unwrap_err().code(), ErrorCode::NotFound);

    // Bad registrations are clear errors.
    let h = handler(|_| Ok(Value::Null));
    assert_eq!(
        e.register_tool("math.add", h.clone(), None, None, "", vec![]).unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        e.register_tool("nodot", h.clone(), None, None, "", vec![]).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        e.register_tool("bad-name.t", h.clone(), None, None, "", vec![]).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let err = e.register_tool("m.t", h, Some(json!({"type": 12})), None, "", vec![]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);

    // Deregistering the manual removes the handlers too.
    assert!(e.deregister_manual("math"));
    assert_eq!(call(&e, "math.add", json!({"a": 1, "b": 1})).await.unwrap_err().code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn native_errors_panics_timeouts_and_cancellation() {
    let e = engine(json!({"calls": {"default_timeout": "200ms"}}));
    e.register_tool("t.fail", handler(|_| Err(utp_core::Error::Internal("nope".into()))), None, None, "", vec![])
        .unwrap();
    e.register_tool("t.panic", handler(|_| panic!("handler exploded")), None, None, "", vec![]).unwrap();
    let slow: NativeHandler = Arc::new(|_| {
        async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Value::Null)
        }
        .boxed()
    });
    e.register_tool("t.slow", slow, None, None, "", vec![]).unwrap();

    let err = call(&e, "t.fail", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    let err = call(&e, "t.panic", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Panic);
    assert!(err.to_string().contains("handler exploded"), "{err}");

    let start = Instant::now();
    let err = call(&e, "t.slow", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert!(start.elapsed() < Duration::from_secs(5));
    let opts = CallOptions { timeout: Some(Duration::from_millis(50)), ..Default::default() };
    assert_eq!(e.call_tool("t.slow", json!({}), opts).await.unwrap_err().code(), ErrorCode::Timeout);

    let token = CancellationToken::new();
    let opts =
        CallOptions { cancel: Some(token.clone()), timeout: Some(Duration::from_secs(20)), ..Default::default() };
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
    });
    assert_eq!(e.call_tool("t.slow", json!({}), opts).await.unwrap_err().code(), ErrorCode::Cancelled);
    canceller.await.unwrap();
}

#[tokio::test]
async fn native_template_without_handler_and_unsupported_types() {
    let e = engine(json!({}));
    e.register_manual(
        ManualSource::Inline(json!({"name": "m", "tools": [
            {"name": "n", "tool_call_template": {"call_template_type": "native"}},
            // `websocket` became callable (tests/websocket.rs); `wasm` has no transport yet.
            {"name": "w", "tool_call_template": {"call_template_type": "wasm", "module": "m.wasm"}}
        ]})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(call(&e, "m.n", json!({})).await.unwrap_err().code(), ErrorCode::NotFound);
    let err = call(&e, "m.w", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Transport);
    assert!(err.to_string().contains("wasm"), "{err}");
}

#[tokio::test]
async fn post_processors_apply_by_scope() {
    let e = engine(json!({"post_processing": [
        {"tool_post_processor_type": "filter_dict", "exclude_keys": ["secret"], "only_include_manuals": ["p"]},
        {"tool_post_processor_type": "limit_strings", "limit": 4}
    ]}));
    let h = handler(|_| Ok(json!({"secret": "s", "text": "abcdefgh", "items": [{"secret": 1}, {"ok": true}]})));
    e.register_tool("p.t", h.clone(), None, None, "", vec![]).unwrap();
    e.register_tool("q.t", h, None, None, "", vec![]).unwrap();
    assert_eq!(call(&e, "p.t", json!({})).await.unwrap(), json!({"text": "abcd", "items": [{"ok": true}]}));
    assert_eq!(
        call(&e, "q.t", json!({})).await.unwrap(),
        json!({"secret": "s", "text": "abcd", "items": [{"secret": 1}, {"ok": true}]})
    );
}

async fn cli_engine(config: Value, tools: Value) -> Engine {
    let e = engine(config);
    e.register_manual(ManualSource::Inline(json!({"name": "sh", "tools": tools})), None).await.unwrap();
    e
}

fn cli_tool(name: &str, commands: Value, extra: Value) -> Value {
    let mut tpl = json!({"call_template_type": "cli", "commands": commands});
    if let (Some(t), Some(x)) = (tpl.as_object_mut(), extra.as_object()) {
        t.extend(x.clone());
    }
    json!({"name": name, "inputs": {"type": "object"}, "tool_call_template": tpl})
}

#[tokio::test]
async fn cli_injection_attempts_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let m = marker.display().to_string();
    let e =
        cli_engine(json!({}), json!([cli_tool("echo", json!([{"command": "echo UTCP_ARG_msg_UTCP_END"}]), json!({}))]))
            .await;
    let attempts = [
        format!("; touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("x\ntouch {m}"),
        format!("a && touch {m} || touch {m}"),
        format!("' ; touch {m} ; '"),
        format!("> {m}"),
    ];
    for attempt in &attempts {
        let out = call(&e, "sh.echo", json!({"msg": attempt})).await.unwrap();
        assert_eq!(out, json!(attempt), "echo must print the argument verbatim");
        assert!(!marker.exists(), "{attempt:?} ran something");
    }
}

#[tokio::test]
async fn cli_argv_env_workdir_json_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("work")).unwrap();
    std::fs::write(dir.path().join("work/data.txt"), "from work dir").unwrap();
    // SAFETY of the test: variable names no other test uses.
    unsafe {
        std::env::set_var("UTP_CALLS_TEST_LEAK", "host-secret");
        std::env::set_var("sh_GREETING", "hello there");
    }
    let config = json!({"calls": {"file_root": dir.path(), "default_timeout": "10s"}});
    let tools = json!([
        cli_tool(
            "args",
            json!([{"command": "printf '%s|' UTCP_ARG_a_UTCP_END --n=UTCP_ARG_n_UTCP_END UTCP_ARG_missing_UTCP_END $GREETING"}]),
            json!({})
        ),
        cli_tool("env", json!([{"command": "env"}]), json!({"env_vars": {"MY_ARG": "UTCP_ARG_v_UTCP_END"}})),
        cli_tool("cat", json!([{"command": "cat data.txt"}]), json!({"working_dir": "work"})),
        cli_tool("json", json!([{"command": "printf '{\"ok\": true, \"n\": UTCP_ARG_n_UTCP_END}'"}]), json!({})),
        cli_tool(
            "steps",
            json!([{"command": "echo one", "append_to_final_output": true}, {"command": "echo two"}]),
            json!({})
        ),
        cli_tool("fail", json!([{"command": "sh -c 'echo bad >&2; exit 3'"}]), json!({})),
        cli_tool("missing", json!([{"command": "/nonexistent/utp-tool"}]), json!({})),
        cli_tool("pipe", json!([{"command": "ls | wc -l"}]), json!({})),
        cli_tool("big", json!([{"command": "head -c 100000 /dev/zero"}]), json!({}))
    ]);
    let e = cli_engine(config, tools).await;
    assert_eq!(
        call(&e, "sh.args", json!({"a": "two words", "n": 5})).await.unwrap(),
        json!("two words|--n=5|hello there|")
    );
    let env = call(&e, "sh.env", json!({"v": "x y"})).await.unwrap();
    let env = env.as_str().unwrap();
    assert!(env.contains("MY_ARG=x y") && env.contains("PATH="), "{env}");
    assert!(!env.contains("UTP_CALLS_TEST_LEAK"), "host environment leaked: {env}");
    assert_eq!(call(&e, "sh.cat", json!({})).await.unwrap(), json!("from work dir"));
    assert_eq!(call(&e, "sh.json", json!({"n": 7})).await.unwrap(), json!({"ok": true, "n": 7}));
    assert_eq!(call(&e, "sh.steps", json!({})).await.unwrap(), json!("one\ntwo"));
    let err = call(&e, "sh.fail", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ToolFailed);
    assert!(err.to_string().contains("status 3") && err.to_string().contains("bad"), "{err}");
    assert_eq!(call(&e, "sh.missing", json!({})).await.unwrap_err().code(), ErrorCode::Transport);
    let err = call(&e, "sh.pipe", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidManual);
    assert!(err.to_string().contains('|'), "{err}");

    let capped = cli_engine(
        json!({"calls": {"max_response_size": 1000}}),
        json!([cli_tool("big", json!([{"command": "head -c 100000 /dev/zero"}]), json!({}))]),
    )
    .await;
    let err = call(&capped, "sh.big", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("1000 bytes"), "{err}");
}

#[tokio::test]
async fn cli_variable_errors_name_the_namespaced_variable() {
    let e =
        cli_engine(json!({}), json!([cli_tool("v", json!([{"command": "echo ${UTP_SURELY_UNSET_VAR}"}]), json!({}))]))
            .await;
    let err = call(&e, "sh.v", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::VariableNotFound);
    assert!(err.to_string().contains("sh_UTP_SURELY_UNSET_VAR"), "{err}");
}

fn alive(pid: &str) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test]
async fn cli_timeout_and_cancel_kill_the_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let tools =
        json!([cli_tool("slow", json!([{"command": format!("sh -c '{script}'")}]), json!({"timeout": "300ms"}))]);
    let e = cli_engine(json!({}), tools).await;
    let start = Instant::now();
    let err = call(&e, "sh.slow", json!({})).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert!(start.elapsed() < Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(!alive(pid.trim()), "the background grandchild survived the timeout");

    std::fs::remove_file(&pidfile).unwrap();
    let token = CancellationToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        t2.cancel();
    });
    let opts = CallOptions { cancel: Some(token), timeout: Some(Duration::from_secs(20)), ..Default::default() };
    assert_eq!(e.call_tool("sh.slow", json!({}), opts).await.unwrap_err().code(), ErrorCode::Cancelled);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(!alive(pid.trim()), "the background grandchild survived cancellation");
}

#[tokio::test]
async fn text_and_file_tools_are_confined() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("doc.json"), "{\"a\": 1}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt")).unwrap();
    let e = engine(json!({"calls": {"file_root": root}}));
    e.register_manual(
        ManualSource::Inline(json!({"name": "f", "tools": [
            {"name": "text", "tool_call_template": {"call_template_type": "text", "content": "inline text"}},
            {"name": "doc", "tool_call_template": {"call_template_type": "file", "file_path": "doc.json"}},
            {"name": "up", "tool_call_template": {"call_template_type": "file", "file_path": "../secret.txt"}},
            {"name": "link", "tool_call_template": {"call_template_type": "file", "file_path": "link.txt"}},
            {"name": "abs", "tool_call_template": {"call_template_type": "file", "file_path": dir.path().join("secret.txt")}},
            {"name": "gone", "tool_call_template": {"call_template_type": "file", "file_path": "gone.txt"}}
        ]})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(call(&e, "f.text", json!({})).await.unwrap(), json!("inline text"));
    assert_eq!(call(&e, "f.doc", json!({})).await.unwrap(), json!("{\"a\": 1}"));
    for t in ["f.up", "f.link", "f.abs"] {
        let err = call(&e, t, json!({})).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Security, "{t}: {err}");
        assert!(!err.to_string().contains("secret\""), "{err}");
    }
    assert_eq!(call(&e, "f.gone", json!({})).await.unwrap_err().code(), ErrorCode::NotFound);
}

/// A host thread blocked on a call whose callbacks may run there (`Engine::blocking_call`
/// → `callbacks_here`) drives it with `Engine::drive_with_callbacks`: its native tool and
/// host rules see `host_callbacks_here()` and run on that thread; a deadline of the call's
/// own, a configured default timeout, or a thread inside a runtime keep them elsewhere.
#[test]
fn blocking_calls_run_host_callbacks_on_the_calling_thread_without_a_deadline_of_their_own() {
    use std::sync::Mutex;
    use std::thread::ThreadId;
    use utp_core::{HostRule, HostVerdict, host_callbacks_here, run_host_callback};
    type Seen = Arc<Mutex<Vec<(&'static str, ThreadId, bool)>>>;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let setup = |config: Value| {
        let e = engine(config);
        let seen: Seen = Arc::default();
        let (tool_seen, rule_seen) = (seen.clone(), seen.clone());
        let tool = handler(move |_| {
            // What a binding's adapter does: runs the callback with the mark cleared.
            let here = host_callbacks_here();
            run_host_callback(|| assert!(!host_callbacks_here()));
            tool_seen.lock().unwrap().push(("tool", std::thread::current().id(), here));
            Ok(json!(1))
        });
        e.register_tool("t.where", tool, None, None, "", vec![]).unwrap();
        let rule: HostRule = Arc::new(move |_, _, params: Value| {
            rule_seen.lock().unwrap().push(("rule", std::thread::current().id(), host_callbacks_here()));
            let deny = params.get("deny").is_some();
            Box::pin(async move { Ok(if deny { HostVerdict::Deny(Some("no".into())) } else { HostVerdict::Allow }) })
        });
        e.add_business_rule("where", rule).unwrap();
        (e, seen)
    };
    let me = std::thread::current().id();
    let blocking = |e: &Engine, args: Value, options: CallOptions| {
        let call = e.blocking_call("t.where", &options);
        let here = call.callbacks_here();
        let out = match here {
            true => e.drive_with_callbacks(rt.handle(), e.call_tool("t.where", args, options)),
            false => rt.block_on(e.call_tool("t.where", args, options)),
        };
        (here, out)
    };
    let (e, seen) = setup(json!({}));
    let (here, out) = blocking(&e, json!({}), CallOptions::default());
    assert!(here);
    assert_eq!(out.unwrap(), json!(1));
    assert_eq!(std::mem::take(&mut *seen.lock().unwrap()), vec![("rule", me, true), ("tool", me, true)]);
    assert!(!host_callbacks_here(), "the mark is only set while the call is polled");
    // Decisions are the same: a denial is PERMISSION_DENIED and the tool does not run.
    let (_, out) = blocking(&e, json!({"deny": true}), CallOptions::default());
    assert_eq!(out.unwrap_err().code(), ErrorCode::PermissionDenied);
    assert_eq!(std::mem::take(&mut *seen.lock().unwrap()), vec![("rule", me, true)]);
    // A timeout of the call's own: not here.
    let timed = CallOptions { timeout: Some(Duration::from_secs(5)), ..CallOptions::default() };
    assert!(!e.blocking_call("t.where", &timed).callbacks_here());
    assert!(!e.host_callbacks_here("t.where", &timed));
    assert!(e.host_callbacks_here("t.where", &CallOptions::default()));
    // Polled on the runtime (a workflow step, an async call): never marked.
    rt.block_on(e.call_tool("t.where", json!({}), CallOptions::default())).unwrap();
    assert!(seen.lock().unwrap().iter().all(|(_, _, here)| !here));
    // Inside a runtime's context the thread cannot drive a call here.
    assert!(!rt.block_on(async { e.blocking_call("t.where", &CallOptions::default()).callbacks_here() }));
    // A configured default timeout is a deadline of the call's own.
    let (configured, _) = setup(json!({"calls": {"default_timeout": "5s"}}));
    assert!(!configured.blocking_call("t.where", &CallOptions::default()).callbacks_here());
    // A tool that does I/O (a CLI tool) is not driven here, even under host rules.
    let manual = json!({"tools": [{"name": "echo", "tool_call_template": {
        "call_template_type": "cli", "commands": [{"command": "echo hi"}]}}]});
    rt.block_on(e.register_manual(ManualSource::Inline(manual), Some("sh"))).unwrap();
    assert!(!e.blocking_call("sh.echo", &CallOptions::default()).callbacks_here());
    // A callback run here may block on the runtime (a nested call the usual way).
    let nested = e.clone();
    let handle = rt.handle().clone();
    let outer = handler(move |_| {
        run_host_callback(|| handle.block_on(nested.call_tool("t.where", json!({}), CallOptions::default())))
    });
    e.register_tool("t.outer", outer, None, None, "", vec![]).unwrap();
    let out = e.drive_with_callbacks(rt.handle(), e.call_tool("t.outer", json!({}), CallOptions::default()));
    assert_eq!(out.unwrap(), json!(1));
}
