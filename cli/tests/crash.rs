//! Crash test (docs/design.md §7, §9): `utp run` processes are SIGKILLed at random moments,
//! before, during and after step commits, each followed by `utp resume`. Nothing a
//! killed process committed is lost or repeated:
//!
//! - every execution that was started ends `completed` with the expected outputs;
//! - a step whose completion was committed before a kill is never called again;
//! - every completed step reached the server (at least once, by its idempotency key);
//! - the audit log holds one `step.completed` per step and one `workflow.completed`
//!   per execution.
//!
//! The tool is an HTTP endpoint served by this test on 127.0.0.1, counting calls by
//! their `Idempotency-Key` header (`<execution_id>:<step_id>`) and answering after
//! a random 1–20 ms. `CRASH_SEED=N` replays a run, `CRASH_ROUNDS=N` (25) changes its
//! length, `CRASH_KILL_MAX_MS=N` (300) the longest a run lives before its SIGKILL.

// The loopback server shared with core's integration tests; this test uses part of it.
#[allow(dead_code)]
#[path = "../../core/tests/support/blocking.rs"]
mod loopback;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const STEPS: usize = 6;
/// Executions each killed process runs at once (`utp run --repeat`).
const PER_PROCESS: usize = 4;

/// What the server computes for one step: the chain's arithmetic.
fn next(n: i64) -> i64 {
    (n * 7 + 3) % 1_000_003
}

fn expected(x: i64) -> i64 {
    (0..STEPS).fold(x, |n, _| next(n))
}

/// xorshift64*: enough randomness for delays, reproducible from a seed.
struct Rng(AtomicU64);

impl Rng {
    fn below(&self, n: u64) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y >> 12;
            y ^= y << 25;
            y ^= y >> 27;
            match self.0.compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return y.wrapping_mul(0x2545_f491_4f6c_dd1d) % n,
                Err(now) => x = now,
            }
        }
    }
}

/// Calls seen per idempotency key.
type Calls = Arc<Mutex<HashMap<String, u32>>>;

/// A loopback HTTP/1.1 server: `GET /step?n=N` answers `{"n": next(N)}` after 1–20 ms
/// and counts the request's `Idempotency-Key`.
fn serve(calls: Calls, rng: Arc<Rng>) -> u16 {
    loopback::serve(move |request| {
        let key = request.header("idempotency-key").map(str::to_string);
        let n: Option<i64> =
            request.target.split_once("?n=").and_then(|(_, q)| q.split('&').next().and_then(|v| v.parse().ok()));
        match (key, n) {
            (Some(key), Some(n)) => {
                *calls.lock().unwrap().entry(key).or_default() += 1;
                std::thread::sleep(Duration::from_millis(1 + rng.below(20)));
                (200, format!("{{\"n\": {}}}", next(n)))
            }
            _ => (400, "{\"error\": \"expected ?n= and an Idempotency-Key\"}".to_string()),
        }
    })
}

fn utp(db: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_utp"))
        .arg("--db")
        .arg(db)
        .args(args)
        .current_dir(db.parent().unwrap())
        .output()
        .expect("run utp");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn json(db: &Path, args: &[&str]) -> Value {
    let (code, out, err) = utp(db, args);
    assert_eq!(code, 0, "utp {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("utp {args:?}: {e}: {out}"))
}

/// `utp events --json`: JSON Lines.
fn events(db: &Path, kind: &str) -> Vec<Value> {
    let (code, out, err) = utp(db, &["events", "--json", "--type", kind]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `<execution_id>:<step_id>` of every step the store holds as succeeded.
fn committed_steps(db: &Path) -> HashSet<String> {
    let mut keys = HashSet::new();
    for exec in json(db, &["executions", "--json"]).as_array().unwrap() {
        let id = exec["execution_id"].as_str().unwrap();
        for (step, s) in exec["steps"].as_object().unwrap() {
            if s["status"] == "succeeded" {
                keys.insert(format!("{id}:{step}"));
            }
        }
    }
    keys
}

#[test]
fn killed_runs_resume_without_losing_or_repeating_committed_steps() {
    let started = Instant::now();
    let kill_max: u64 = std::env::var("CRASH_KILL_MAX_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let rounds: usize = std::env::var("CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    eprintln!("crash test: CRASH_SEED={seed} CRASH_ROUNDS={rounds}");
    let rng = Arc::new(Rng(AtomicU64::new(seed)));
    let calls: Calls = Arc::default();
    let port = serve(calls.clone(), rng.clone());

    let dir = tempfile::tempdir().unwrap();
    let manuals = dir.path().join("manuals");
    std::fs::create_dir(&manuals).unwrap();
    std::fs::write(
        manuals.join("svc.utcp.json"),
        format!(
            r#"{{"tools": [{{"name": "step",
                "inputs": {{"type": "object", "properties": {{"n": {{"type": "integer"}}}}, "required": ["n"]}},
                "tool_call_template": {{"call_template_type": "http", "http_method": "GET",
                    "url": "http://127.0.0.1:{port}/step", "idempotency_header": "Idempotency-Key"}}}}]}}"#
        ),
    )
    .unwrap();
    let mut wf = String::from("name: chain\ninputs: {x: {type: integer}}\nsteps:\n");
    wf.push_str("  - {id: s0, tool: svc.step, args: {n: \"${{ inputs.x }}\"}}\n");
    for i in 1..STEPS {
        wf.push_str(&format!(
            "  - {{id: s{i}, tool: svc.step, depends_on: [s{p}], args: {{n: \"${{{{ steps.s{p}.output.n }}}}\"}}}}\n",
            p = i - 1
        ));
    }
    wf.push_str(&format!("outputs: {{last: \"${{{{ steps.s{}.output.n }}}}\"}}\n", STEPS - 1));
    let wf_path = dir.path().join("chain.yaml");
    std::fs::write(&wf_path, wf).unwrap();
    let db = dir.path().join("crash.db");
    let (wf_path, manuals) = (wf_path.to_str().unwrap(), manuals.to_str().unwrap());

    let mut inputs: HashMap<String, i64> = HashMap::new(); // execution id -> x
    let (mut resumed_total, mut finished_before_kill) = (0usize, 0usize);
    let mut seen_before_round: HashSet<String> = HashSet::new();
    for round in 0..rounds {
        let x = round as i64 * 1000 + 17;
        let x_arg = format!("x={x}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_utp"))
            .arg("--db")
            .arg(&db)
            .args(["run", wf_path, "--from", manuals, "--input", &x_arg, "--repeat", &PER_PROCESS.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(kill_max + 1)));
        if child.try_wait().unwrap().is_some() {
            finished_before_kill += 1;
        } else {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();

        // What the killed process committed, and how often the server saw those steps.
        let committed = committed_steps(&db);
        let counts_at_kill: HashMap<String, u32> = {
            let calls = calls.lock().unwrap();
            committed.iter().map(|k| (k.clone(), calls.get(k).copied().unwrap_or(0))).collect()
        };
        for exec in json(&db, &["executions", "--json"]).as_array().unwrap() {
            let id = exec["execution_id"].as_str().unwrap().to_string();
            if !seen_before_round.contains(&id) {
                inputs.insert(id, x);
            }
        }

        let (code, out, err) = utp(&db, &["resume", "--from", manuals, "--json"]);
        assert_eq!(code, 0, "round {round}: utp resume: {out}{err}");
        let resumed: Value = serde_json::from_str(&out).unwrap();
        for r in resumed.as_array().unwrap() {
            assert_eq!(r["status"], "completed", "round {round}: {r}");
            let id = r["execution_id"].as_str().unwrap();
            assert_eq!(r["outputs"]["last"], expected(inputs[id]), "round {round}: {r}");
        }
        resumed_total += resumed.as_array().unwrap().len();

        // Committed steps were not called again by the resume.
        let calls_now = calls.lock().unwrap().clone();
        for (key, before) in &counts_at_kill {
            assert!(*before >= 1, "round {round}: step {key} committed but never called");
            assert_eq!(
                calls_now.get(key).copied().unwrap_or(0),
                *before,
                "round {round}: committed step {key} ran again"
            );
        }
        seen_before_round.extend(inputs.keys().cloned());
    }

    // The whole history.
    let executions = json(&db, &["executions", "--json"]);
    let executions = executions.as_array().unwrap();
    assert_eq!(executions.len(), inputs.len());
    let calls = calls.lock().unwrap().clone();
    for exec in executions {
        let id = exec["execution_id"].as_str().unwrap();
        assert_eq!(exec["status"], "completed", "{exec}");
        let record = json(&db, &["show", id, "--json"]);
        assert_eq!(record["outputs"]["last"], expected(inputs[id]), "{record}");
        for i in 0..STEPS {
            let step = &record["steps"][format!("s{i}")];
            assert_eq!(step["status"], "succeeded", "{record}");
            assert!(calls.get(&format!("{id}:s{i}")).copied().unwrap_or(0) >= 1, "{id}:s{i} never reached the server");
        }
    }
    let mut completed_steps: HashMap<(String, String), usize> = HashMap::new();
    for e in events(&db, "step.completed") {
        let key = (e["execution_id"].as_str().unwrap().to_string(), e["step_id"].as_str().unwrap().to_string());
        *completed_steps.entry(key).or_default() += 1;
    }
    assert_eq!(completed_steps.len(), executions.len() * STEPS);
    assert!(completed_steps.values().all(|&n| n == 1), "a step completed twice: {completed_steps:?}");
    let mut finished: HashMap<String, usize> = HashMap::new();
    for e in events(&db, "workflow.completed") {
        *finished.entry(e["execution_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(finished.len(), executions.len());
    assert!(finished.values().all(|&n| n == 1), "an execution completed twice: {finished:?}");

    eprintln!(
        "crash test: {rounds} rounds, {} kills ({finished_before_kill} runs had ended before theirs), {} executions \
         ({resumed_total} finished by `utp resume`), {} step calls, {} step(s) called again after a kill \
         (in flight, never committed), {:.1} s",
        rounds - finished_before_kill,
        executions.len(),
        calls.values().sum::<u32>(),
        calls.values().filter(|&&n| n > 1).count(),
        started.elapsed().as_secs_f64()
    );
}
