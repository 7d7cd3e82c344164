//! Stdio servers: the child process behind an MCP session.

use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::Arc;

use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::RoleClient;
use rmcp::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
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

/// The first line a server wrote to stdout that was not JSON-RPC, kept to explain a
/// server that never answers (many print a banner there, which the spec forbids).
pub(super) type Garbage = Arc<parking_lot::Mutex<Option<String>>>;

/// Newline-delimited JSON-RPC over a child's stdio. Unlike rmcp's codec, a line that is
/// not JSON-RPC is kept in [`Garbage`] (and skipped), so that the error can say why the
/// server seemed silent.
pub(super) struct StdioTransport {
    lines: Lines<BufReader<ChildStdout>>,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    garbage: Garbage,
    max_line: usize,
}

impl StdioTransport {
    pub(super) fn new(stdout: ChildStdout, stdin: ChildStdin, garbage: Garbage, max_line: usize) -> StdioTransport {
        StdioTransport {
            lines: BufReader::new(stdout).lines(),
            stdin: Arc::new(tokio::sync::Mutex::new(Some(stdin))),
            garbage,
            max_line,
        }
    }
}

impl Transport<RoleClient> for StdioTransport {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send + 'static {
        let stdin = self.stdin.clone();
        async move {
            let mut line = serde_json::to_vec(&item).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let mut stdin = stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the server's stdin is closed"));
            };
            pipe.write_all(&line).await?;
            pipe.flush().await
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        loop {
            let line = match self.lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!("mcp server stdout: {e}");
                    return None;
                }
            };
            if line.len() > self.max_line {
                self.note_garbage(&format!("a line of {} bytes, over calls.max_response_size", line.len()));
                return None;
            }
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(message) => return Some(message),
                Err(_) => self.note_garbage(&line),
            }
        }
    }

    async fn close(&mut self) -> std::result::Result<(), Self::Error> {
        // Closing stdin is how the spec asks a server to exit.
        self.stdin.lock().await.take();
        Ok(())
    }
}

impl StdioTransport {
    fn note_garbage(&self, line: &str) {
        tracing::warn!("mcp server wrote a line that is not JSON-RPC to stdout: {}", super::super::excerpt(line, 200));
        let mut first = self.garbage.lock();
        if first.is_none() {
            *first = Some(super::super::excerpt(line, 80));
        }
    }
}
