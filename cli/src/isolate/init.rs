//! The namespace's init, PID 1 inside: a fresh `/proc` (only the processes
//! inside), a nested user namespace in which CMD is its usual user with no
//! power over the mounts that hide the keys, Landlock, the relay from
//! 127.0.0.1 to the broker's Unix socket, then CMD, waited for (and every
//! orphan inside reaped). When this process ends, the kernel ends every
//! process in the namespace.

use std::process::{Command, ExitCode};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Plan, landlock};

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
        .map_err(|e| format!("the relay cannot listen: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("the relay cannot listen: {e}"))?
        .port();
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
        "agent-vault: isolation: user, mount, PID and network namespaces (the only way out is the broker); key store, .local/ and {} key file(s) hidden; {landlock}",
        plan.hide_files.len()
    );
    relay(listener, plan.socket.clone())?;

    let (program, args) = plan.command.split_first().ok_or("run needs a command")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in &plan.env_remove {
        cmd.env_remove(k);
    }
    cmd.envs(plan.env.iter().cloned())
        .envs(plan.proxy_env(&format!("127.0.0.1:{port}")));
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

/// The relay: each connection to 127.0.0.1:PORT joined to a new connection
/// to the broker's Unix socket, on a thread of its own.
fn relay(listener: std::net::TcpListener, socket: std::path::PathBuf) -> Result<(), String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("the relay: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("the relay: {e}"))?;
    std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((mut tcp, _)) = listener.accept().await {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                        }
                    });
                }
            });
        })
        .map_err(|e| format!("the relay: {e}"))?;
    Ok(())
}
