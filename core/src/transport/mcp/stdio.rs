//! Stdio servers: the child process behind an MCP session.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::config::StdioServer;
use crate::error::{Error, ErrorCode, Result};

/// Bytes of a server's stderr kept in the engine's log, per server start.
const STDERR_LOG_CAP: usize = 64 * 1024;

/// Start `spec`: no shell; the environment cleared and rebuilt from the allowlist and
/// the server's `env`; a process group of its own, so that ending it ends its children.
pub(super) fn spawn(
    env_allowlist: &[String],
    manual: &str,
    server: &str,
    spec: &StdioServer,
) -> Result<(Child, ChildStdout, ChildStdin)> {
    let mut command = tokio::process::Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(env_allowlist.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))))
        .envs(spec.env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|e| {
        Error::with_code(ErrorCode::Transport, format!("mcp server '{server}': cannot run '{}': {e}", spec.command))
    })?;
    let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(Error::Internal("mcp: the child's stdio is not piped".into()));
    };
    tokio::spawn(log_stderr(manual.to_string(), server.to_string(), stderr));
    Ok((child, stdout, stdin))
}

/// Copy a server's stderr into the engine's log, up to [`STDERR_LOG_CAP`] bytes.
async fn log_stderr(manual: String, server: String, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    let mut logged = 0usize;
    while let Ok(Some(line)) = lines.next_line().await {
        if logged < STDERR_LOG_CAP {
            logged += line.len() + 1;
            tracing::info!(manual = %manual, server = %server, "mcp stderr: {line}");
        }
    }
}

pub(super) fn is_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

fn signal_group(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Kill the child's group without waiting; tokio reaps it (`kill_on_drop`).
pub(super) fn kill(child: &mut Child) {
    signal_group(child, rustix::process::Signal::KILL);
    let _ = child.start_kill();
}

/// SIGTERM to the group, SIGKILL after `grace`, reaping the child so no zombie is left.
/// Its stdin was closed before (the client's cancel), as the MCP spec orders.
pub(super) fn end(child: &mut Child, grace: Duration) {
    let wait_until = |child: &mut Child, deadline: Instant| {
        while Instant::now() < deadline {
            if !is_running(child) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    };
    signal_group(child, rustix::process::Signal::TERM);
    if wait_until(child, Instant::now() + grace) {
        return;
    }
    kill(child);
    wait_until(child, Instant::now() + Duration::from_secs(1));
}
