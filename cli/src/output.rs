//! Printing: stdout for results (a closed pipe is not an error), stderr for
//! errors, each followed by what to do about it.

use std::io::{self, Write};
use std::process::ExitCode;

use agent_vault_core::Error;

/// A failure of the binary: a core error or a problem with the arguments.
pub enum CliError {
    /// From the core library.
    Core(Error),
    /// Anything else, with an optional hint.
    Msg(String, Option<String>),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Core(e)
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Prints an error and its hint; returns the exit code.
pub fn report_error(e: &CliError) -> ExitCode {
    let (msg, hint) = match e {
        CliError::Core(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS;
        }
        CliError::Core(e) => (e.to_string(), e.hint()),
        CliError::Msg(m, h) => (m.clone(), h.clone()),
    };
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "agent-vault: error: {}", clean(&msg));
    if let Some(h) = hint {
        let _ = writeln!(err, "agent-vault: hint: {}", clean(&h));
    }
    ExitCode::FAILURE
}

/// Writes bytes to stdout; a closed pipe ends the program quietly.
pub fn stdout_bytes(b: &[u8]) -> CliResult<()> {
    let mut out = io::stdout().lock();
    match out.write_all(b).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError::Msg(
            format!("cannot write to standard output: {e}"),
            None,
        )),
    }
}

/// Writes a line to stdout.
pub fn line(s: impl AsRef<str>) -> CliResult<()> {
    let mut s = s.as_ref().to_owned();
    s.push('\n');
    stdout_bytes(s.as_bytes())
}

/// Prints JSON.
pub fn json(v: &serde_json::Value) -> CliResult<()> {
    line(serde_json::to_string_pretty(v).unwrap_or_default())
}

/// A note on stderr.
pub fn note(s: impl AsRef<str>) {
    let _ = writeln!(io::stderr().lock(), "agent-vault: {}", clean(s.as_ref()));
}

/// Text that came from a vault file (a description, a file name, an error
/// quoting one) made safe for a terminal: control characters and
/// bidirectional overrides are shown escaped, so no escape sequence runs and
/// no fake line appears. JSON output needs none of this (serde escapes).
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    agent_vault_core::model::printable(s)
}
