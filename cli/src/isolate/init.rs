//! The namespace's init, PID 1 inside: a fresh `/proc` (only the processes
//! inside), a nested user namespace in which CMD is its usual user with no
//! power over the mounts that hide the keys, a listener on 127.0.0.1 passed
//! out to the supervisor (which hands it to the broker: the broker accepts
//! CMD's connections itself, and holds their token), Landlock, then CMD,
//! waited for (and every orphan inside reaped). When this process ends, the
//! kernel ends every process in the namespace.

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Plan, channel, landlock};

pub fn run(plan: Plan) -> Result<ExitCode, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
    // No ptrace and no /proc/1/* for what runs inside.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount /proc: {e}"))?;
    let outer = read_outer_ids()?;
    // While this process has one thread: the nested user namespace, in
    // which CMD has its own uid and no capability over this namespace's
    // mounts (they belong to the parent user namespace).
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("nested user namespace: {e}"))?;
    std::fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups: {e}"))?;
    std::fs::write("/proc/self/uid_map", format!("{} 0 1", outer.0))
        .map_err(|e| format!("uid_map: {e}"))?;
    std::fs::write("/proc/self/gid_map", format!("{} 0 1", outer.1))
        .map_err(|e| format!("gid_map: {e}"))?;

    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?
        .port();
    // Out to the supervisor, which hands it to the broker; CMD starts once
    // the broker has it. Only the broker keeps it.
    let mut to_supervisor = channel::stdin_channel()?;
    channel::send_fd(&to_supervisor, channel::LISTENER, &listener)
        .map_err(|e| format!("cannot pass the listener out: {e}"))?;
    drop(listener);
    let mut go = [0u8; 1];
    match to_supervisor.read(&mut go) {
        Ok(1) if go[0] == channel::GO => {}
        _ => return Err("the broker did not take the listener".into()),
    }
    let hidden: Vec<_> = plan
        .hide_dirs
        .iter()
        .chain(&plan.hide_files)
        .cloned()
        .collect();
    let landlock = match landlock::restrict(&hidden, port) {
        Ok(what) => format!("Landlock: {what}"),
        Err(e) => format!("no Landlock ({e})"),
    };
    eprintln!(
        "agent-vault: isolation: user, mount, PID and network namespaces (the only way out is the broker, which holds the token: the supervisor renews it); key store, .local/ and {} key file(s) hidden; {landlock}",
        plan.hide_files.len()
    );

    let (program, args) = plan.command.split_first().ok_or("run needs a command")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in &plan.env_remove {
        cmd.env_remove(k);
    }
    // Not the supervisor's channel.
    cmd.envs(plan.env.iter().cloned())
        .envs(plan.proxy_env(&format!("127.0.0.1:{port}"), None))
        .stdin(Stdio::null());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let main = Pid::from_raw(i32::try_from(child.id()).map_err(|e| e.to_string())?);
    // PID 1 reaps every orphan; the answer is CMD's.
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => {
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => {
                return Ok(ExitCode::from(128u8.saturating_add(sig as u8)));
            }
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    }
}

/// This namespace's ids of the user outside: what `/proc/self/uid_map` and
/// `gid_map` map 0 to (the set-up step wrote `0 OUTER 1`).
fn read_outer_ids() -> Result<(u32, u32), String> {
    let outer = |path: &str| -> Result<u32, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        text.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: cannot read {text:?}"))
    };
    Ok((outer("/proc/self/uid_map")?, outer("/proc/self/gid_map")?))
}
