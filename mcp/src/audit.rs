//! The audit log: one JSON line per tool call (time, tool, agent, secret or
//! host, ok), appended to a local file. Never a value.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// An open audit log, or none.
pub struct AuditLog(Option<Mutex<std::fs::File>>);

impl AuditLog {
    /// Opens (creating, appending to) the file, if one is given.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        Ok(AuditLog(match path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        }))
    }

    /// Appends one line; `key` is "secret" or "host", `subject` its value.
    pub fn record(&self, tool: &str, agent: &str, key: &str, subject: Option<&str>, ok: bool) {
        let Some(file) = &self.0 else { return };
        let mut line = serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "tool": tool,
            "agent": agent,
            "ok": ok,
        });
        if let Some(s) = subject {
            line[key] = serde_json::Value::String(s.to_owned());
        }
        let mut text = line.to_string();
        text.push('\n');
        if let Ok(mut f) = file.lock()
            && let Err(e) = f.write_all(text.as_bytes())
        {
            eprintln!("agent-vault mcp: cannot write the audit log: {e}");
        }
    }
}
