//! Documentation generated from the command definitions: `completions`, `man`.

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::output::{self, CliError, CliResult, line};

/// `completions`.
pub(super) fn completions(shell: clap_complete::Shell) -> CliResult<ExitCode> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "agent-vault", &mut buf);
    output::stdout_bytes(&buf)?;
    Ok(ExitCode::SUCCESS)
}

/// `man`.
pub(super) fn man(dir: &Path) -> CliResult<ExitCode> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Msg(format!("cannot create {}: {e}", dir.display()), None))?;
    let write = |cmd: clap::Command, name: String| -> CliResult<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut buf)
            .map_err(|e| CliError::Msg(format!("cannot render man page: {e}"), None))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, buf)
            .map_err(|e| CliError::Msg(format!("cannot write {}: {e}", path.display()), None))
    };
    let root = Cli::command();
    let mut n = 0;
    for sub in root.get_subcommands() {
        let name = format!("agent-vault-{}", sub.get_name());
        write(sub.clone().name(name.clone()), name)?;
        n += 1;
    }
    write(root, "agent-vault".into())?;
    line(format!("wrote {} man pages to {}", n + 1, dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
