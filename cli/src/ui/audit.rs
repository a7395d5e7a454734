//! The page's view of the broker's audit log: the newest records, read with
//! the proxy's own reader. Records hold names, never values.

use std::fmt::Write;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use agent_vault_proxy::audit::{Record, records};

use super::html::{esc, text};

/// How much of the log's end is read.
const TAIL_BYTES: u64 = 1024 * 1024;

/// The newest `n` records, newest first.
pub(crate) fn recent(path: &Path, n: usize) -> Result<Vec<Record>, String> {
    let fail = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(fail)?;
    let len = f.metadata().map_err(fail)?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start)).map_err(fail)?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf).map_err(fail)?;
    let text = String::from_utf8_lossy(&buf);
    // A line cut by the seek is skipped by `records` (not JSON).
    let mut all: Vec<Record> = records(&text).collect();
    all.reverse();
    all.truncate(n);
    Ok(all)
}

/// The records as a table.
pub(crate) fn table(list: &[Record]) -> String {
    if list.is_empty() {
        return "<p>No records yet.</p>".into();
    }
    let mut b = String::from(
        "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Agent</th>\
         <th scope=\"col\">Request</th><th scope=\"col\">Status</th><th scope=\"col\">Secrets used</th>\
         </tr></thead><tbody>",
    );
    for r in list {
        let reason = r
            .reason
            .as_deref()
            .map(|w| format!(" <span class=\"muted\">{}</span>", text(w)))
            .unwrap_or_default();
        let _ = write!(
            b,
            "<tr><td>{time}</td><td>{agent}</td><td>{method} <code>{host}{path}</code>{service}</td>\
             <td>{status}{reason}</td><td>{secrets}</td></tr>",
            time = esc(&r.time.strftime("%Y-%m-%d %H:%M:%S").to_string()),
            agent = text(&r.agent),
            method = text(&r.method),
            host = text(&r.host),
            path = text(&r.path),
            service = if r.service.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"muted\">({})</span>", text(&r.service))
            },
            status = r.status,
            secrets = text(&r.secrets.join(", ")),
        );
    }
    b.push_str("</tbody></table></div>");
    b
}
