//! The `cli` transport: commands run without a shell.
//!
//! Each command string of the template (trusted manual text) is split into argv
//! words with POSIX quoting rules; a `UTCP_ARG_<name>_UTCP_END` placeholder is
//! replaced inside its word by the argument's text, so user text is always one
//! argv item (or part of one) and is never interpreted by a shell. Shell operators
//! (`|`, `&&`, `;`, redirections) in a template are refused. The environment is
//! cleared and rebuilt from an allowlist plus the template's `env_vars`. Each
//! command leads its own process group; a timeout, a cancellation or an output
//! over the cap kills the whole group.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::{Transports, arg_text, excerpt};
use crate::error::{Error, Result};
use crate::manual::CliTemplate;
use crate::registry::RegisteredTool;

const OPEN: &str = "UTCP_ARG_";
const CLOSE: &str = "_UTCP_END";
/// How much stderr is kept for an error message.
const STDERR_KEEP: usize = 64 * 1024;

/// Split a command template into argv words, refusing shell syntax.
pub fn split_command(command: &str) -> std::result::Result<Vec<String>, String> {
    if let Some(op) = unquoted_operator(command) {
        return Err(format!(
            "the command uses the shell operator '{op}'; commands run without a shell (quote it to pass it literally, or use one command per step)"
        ));
    }
    let words = shlex::split(command).ok_or_else(|| "the command has unbalanced quotes".to_string())?;
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

/// The first shell control or redirection character outside quotes.
fn unquoted_operator(command: &str) -> Option<char> {
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in command.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '|' | '&' | ';' | '<' | '>' if !single && !double => return Some(c),
            _ => {}
        }
    }
    None
}

/// Quote argv words back into one command string (so the engine can substitute
/// variables word by word and keep the template's shape).
pub fn join_command(words: &[String]) -> std::result::Result<String, String> {
    shlex::try_join(words.iter().map(String::as_str)).map_err(|e| format!("cannot quote the command: {e}"))
}

/// Replace placeholders in one word. `None` when the word was exactly one
/// placeholder of an argument that was not given (the word is dropped).
fn fill(word: &str, args: &Map<String, Value>) -> Option<String> {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    let mut only_missing = false;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find(CLOSE) else { break };
        let name = &after[..end];
        out.push_str(&rest[..start]);
        match args.get(name).filter(|v| !v.is_null()) {
            Some(v) => out.push_str(&arg_text(v)),
            None => only_missing = start == 0 && after[end + CLOSE.len()..].is_empty() && out.is_empty(),
        }
        rest = &after[end + CLOSE.len()..];
    }
    out.push_str(rest);
    if only_missing { None } else { Some(out) }
}

/// Kills the process group when dropped (timeout, cancellation, error), and
/// stray background members once the command is done.
struct GroupGuard(Option<rustix::process::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

pub(crate) async fn call(
    t: &Transports,
    tool: &RegisteredTool,
    tpl: &CliTemplate,
    args: Map<String, Value>,
    _timeout: Duration,
) -> Result<Value> {
    let calls = &t.config.calls;
    if tpl.commands.is_empty() {
        return Err(Error::InvalidManual(format!("tool '{}': the cli template has no commands", tool.name)));
    }
    let cwd = match tpl.working_dir.as_deref().filter(|d| !d.is_empty()) {
        Some(dir) => {
            let p = PathBuf::from(dir);
            let p = if p.is_absolute() { p } else { t.file_root.join(p) };
            if !p.is_dir() {
                return Err(Error::NotFound(format!("tool '{}': working_dir {dir} is not a directory", tool.name)));
            }
            Some(p)
        }
        None => None,
    };
    // Environment: allowlist (template `inherit_env_vars` replaces the configured
    // one, as in python-utcp), then the template's env_vars with placeholders filled.
    let inherit: Vec<String> = match tpl.extra.get("inherit_env_vars") {
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => calls.cli_env_allowlist.clone(),
    };
    let mut env: HashMap<String, String> =
        inherit.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
    for (k, v) in tpl.env_vars.iter().flatten() {
        env.insert(k.clone(), fill(&arg_text(v), &args).unwrap_or_default());
    }

    let last = tpl.commands.len() - 1;
    let mut final_output = Vec::new();
    for (i, cmd) in tpl.commands.iter().enumerate() {
        let words = split_command(&cmd.command)
            .map_err(|e| Error::InvalidManual(format!("tool '{}': command {i}: {e}", tool.name)))?;
        let argv: Vec<String> = words.iter().filter_map(|w| fill(w, &args)).collect();
        let Some((program, rest)) = argv.split_first() else {
            return Err(Error::ValidationFailed(format!(
                "tool '{}': command {i} is empty after filling arguments",
                tool.name
            )));
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(rest)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &cwd {
            command.current_dir(dir);
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::Transport(format!("tool '{}': cannot run '{program}': {e}", tool.name)))?;
        let pgid = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
        let _guard = GroupGuard(pgid);
        let mut stdout = child.stdout.take().ok_or_else(|| Error::Internal("no stdout pipe".into()))?;
        let mut stderr = child.stderr.take().ok_or_else(|| Error::Internal("no stderr pipe".into()))?;
        let max = calls.max_response_size;
        let read_out = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = stdout.read(&mut chunk).await.map_err(|e| Error::Transport(format!("reading output: {e}")))?;
                if n == 0 {
                    return Ok(buf);
                }
                if buf.len() as u64 + n as u64 > max {
                    return Err(Error::Transport(format!(
                        "tool '{}': command {i} wrote more than {max} bytes (calls.max_response_size); it was killed",
                        tool.name
                    )));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        let read_err = async {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8 * 1024];
            while let Ok(n) = stderr.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let keep = n.min(STDERR_KEEP.saturating_sub(buf.len()));
                buf.extend_from_slice(&chunk[..keep]);
            }
            buf
        };
        let read_out = async {
            let result = read_out.await;
            if let (Err(_), Some(pid)) = (&result, pgid) {
                // Over the cap: stop the writer now rather than wait for it.
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            result
        };
        let (out, err_text, status) = tokio::join!(read_out, read_err, child.wait());
        let out = out?;
        let status =
            status.map_err(|e| Error::Transport(format!("tool '{}': waiting for '{program}': {e}", tool.name)))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err_text);
            let code = status.code().map_or_else(|| "a signal".to_string(), |c| format!("status {c}"));
            let mut message = format!("tool '{}': command {i} ('{program}') exited with {code}", tool.name);
            let stderr = stderr.trim();
            if !stderr.is_empty() {
                message.push_str(": ");
                message.push_str(&excerpt(stderr, 512));
            }
            return Err(Error::tool_failed(message));
        }
        if cmd.append_to_final_output.unwrap_or(i == last) {
            final_output.push(String::from_utf8_lossy(&out).into_owned());
        }
    }
    let text = final_output.join("");
    let trimmed = text.trim();
    if trimmed.starts_with(['{', '[', '"']) {
        if let Ok(v) = serde_json::from_str(trimmed) {
            return Ok(v);
        }
    }
    Ok(Value::String(text.trim_end_matches(['\n', '\r']).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splitting_refuses_shell_syntax() {
        assert_eq!(split_command("echo 'a b' UTCP_ARG_x_UTCP_END").unwrap(), ["echo", "a b", "UTCP_ARG_x_UTCP_END"]);
        assert!(split_command("ls | wc").unwrap_err().contains("'|'"));
        assert!(split_command("a && b").is_err());
        assert!(split_command("echo 'open").is_err());
        assert!(split_command("   ").is_err());
        assert!(split_command("echo a>b").is_err());
        // Quoted operators are plain words.
        assert_eq!(split_command("echo '|' \"a;b\" c\\&d").unwrap(), ["echo", "|", "a;b", "c&d"]);
        let words = vec!["echo".to_string(), "a | b; $(x)".to_string()];
        assert_eq!(split_command(&join_command(&words).unwrap()).unwrap(), words);
    }

    #[test]
    fn placeholders_fill_one_word() {
        let args: Map<String, Value> =
            serde_json::from_value(json!({"a": "x; rm -rf /", "n": 3, "o": {"k": true}})).unwrap();
        assert_eq!(fill("UTCP_ARG_a_UTCP_END", &args).unwrap(), "x; rm -rf /");
        assert_eq!(fill("--n=UTCP_ARG_n_UTCP_END", &args).unwrap(), "--n=3");
        assert_eq!(fill("UTCP_ARG_o_UTCP_END", &args).unwrap(), "{\"k\":true}");
        assert_eq!(fill("UTCP_ARG_missing_UTCP_END", &args), None);
        assert_eq!(fill("--m=UTCP_ARG_missing_UTCP_END", &args).unwrap(), "--m=");
        assert_eq!(fill("UTCP_ARG_a_UTCP_END-UTCP_ARG_n_UTCP_END", &args).unwrap(), "x; rm -rf /-3");
    }
}
