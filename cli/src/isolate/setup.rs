//! The set-up step, re-executed single-threaded: new user, mount, network
//! and PID namespaces; the key store, `.local/` and key files covered by
//! empty mounts; loopback up. Then the namespace's init (PID 1) is started
//! and waited for. Where namespaces are refused, Landlock alone.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use nix::unistd::{getgid, getuid};
use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;

use super::{INIT, Level, Plan, channel, exit_code, landlock};

pub fn run(plan: Plan) -> Result<ExitCode, String> {
    // Dies with the supervisor, so killing it ends everything inside.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
    let refused = if plan.force_fallback {
        Some("namespaces skipped (AGENT_VAULT_ISOLATE_FALLBACK)".to_owned())
    } else {
        match enter(&plan) {
            Ok(()) => None,
            Err(NotEntered::Refused(why)) => Some(why),
            // Half inside (a namespace without its mounts or network):
            // nothing may run here, not even the fallback.
            Err(NotEntered::Failed(e)) => return Err(e),
        }
    };
    if let Some(why) = refused {
        if plan.level == Level::Required {
            return Err(format!(
                "{why}; --isolate=required refuses to start without namespaces"
            ));
        }
        return fallback(plan, &why);
    }
    // The first child after unshare(CLONE_NEWPID) is PID 1 of the new
    // namespace; it reads its plan from the supervisor's channel.
    let channel = channel::stdin_channel()?;
    let mut init = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg(INIT)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(channel)))
        .spawn()
        .map_err(|e| format!("cannot start the namespace's init: {e}"))?;
    let status = init.wait().map_err(|e| e.to_string())?;
    Ok(exit_code(status.code()))
}

/// Why the namespaces were not entered.
enum NotEntered {
    /// The kernel refused them: the Landlock fallback may run.
    Refused(String),
    /// Entered, then a step failed: this process is half inside.
    Failed(String),
}

/// New namespaces, this process root in its user namespace (so it and init
/// may mount); the key material covered; loopback up.
fn enter(plan: &Plan) -> Result<(), NotEntered> {
    let (uid, gid) = (getuid(), getgid());
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID,
    )
    .map_err(|e| NotEntered::Refused(format!("user namespaces are refused here ({e})")))?;
    set_up(plan, uid, gid).map_err(NotEntered::Failed)
}

/// Inside the new namespaces: the id maps, private mounts, the key
/// material covered, loopback up.
fn set_up(plan: &Plan, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> Result<(), String> {
    write("/proc/self/setgroups", "deny")?;
    write("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    // Nothing mounted here shows outside.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    hide(plan)?;
    loopback_up()
}

fn write(path: &str, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {path}: {e}"))
}

/// Covers each hidden directory with an empty read-only tmpfs with no
/// access for anyone, and each hidden file with an empty file from such a
/// tmpfs, bound read-only over it.
fn hide(plan: &Plan) -> Result<(), String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut cover: Option<std::path::PathBuf> = None;
    for dir in plan.hide_dirs.iter().filter(|d| d.is_dir()) {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            flags,
            Some("mode=0700,size=16k"),
        )
        .map_err(|e| format!("cannot hide {}: {e}", dir.display()))?;
        if cover.is_none() {
            // The empty file bound over hidden files lives in the first cover.
            let file = dir.join(".hidden");
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o000)
                .open(&file)
                .map_err(|e| format!("cannot hide {}: {e}", dir.display()))?;
            cover = Some(file);
        }
    }
    for file in plan.hide_files.iter().filter(|f| f.is_file()) {
        let source = cover
            .as_deref()
            .ok_or("no hidden directory to take the cover from")?;
        bind_read_only(source, file)?;
    }
    for dir in plan.hide_dirs.iter().filter(|d| d.is_dir()) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o000))
            .map_err(|e| format!("cannot hide {}: {e}", dir.display()))?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("cannot hide {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn bind_read_only(source: &Path, target: &Path) -> Result<(), String> {
    let err = |e| format!("cannot hide {}: {e}", target.display());
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(err)?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(err)
}

/// Brings `lo` (index 1 in a new network namespace) up with one rtnetlink
/// RTM_NEWLINK request, and reads the kernel's answer.
fn loopback_up() -> Result<(), String> {
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const IFF_UP: u32 = 1;
    let err = |e: nix::Error| format!("cannot bring up loopback: {e}");
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(err)?;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&[0, 0]); // ifi_family AF_UNSPEC, pad
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&1i32.to_ne_bytes()); // ifi_index: lo
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(err)?;
    let mut answer = [0u8; 256];
    let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty()).map_err(err)?;
    let kind = answer.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let code = answer
        .get(16..20)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (n >= 20, kind, code) {
        (true, Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (true, Some(NLMSG_ERROR), Some(c)) => Err(format!(
            "cannot bring up loopback: {}",
            nix::Error::from_raw(-c)
        )),
        _ => Err("cannot bring up loopback: an unexpected answer from the kernel".into()),
    }
}

/// No namespaces: Landlock alone (key reads denied, TCP only to the
/// broker's port), then CMD in place of this process, with a token from
/// the supervisor in `HTTPS_PROXY` (not renewed: a listener for a hand-off
/// would be in the host's network, open to every local user).
fn fallback(plan: Plan, why: &str) -> Result<ExitCode, String> {
    let port = plan
        .proxy_tcp
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| format!("--proxy {:?} has no port", plan.proxy_tcp))?;
    let hidden: Vec<_> = plan
        .hide_dirs
        .iter()
        .chain(&plan.hide_files)
        .cloned()
        .collect();
    let (userinfo, mut channel) = fallback_token()?;
    let enforced = landlock::restrict(&hidden, port);
    // Said to the supervisor too, on a line.
    let said = match &enforced {
        Ok(what) => {
            eprintln!(
                "agent-vault: isolation: {why}; Landlock only: {what}; processes outside stay visible; the token is in HTTPS_PROXY and is not renewed"
            );
            "landlock".to_owned()
        }
        Err(e) if plan.level == Level::Required => {
            return Err(format!("{why}, and Landlock is unavailable ({e})"));
        }
        Err(e) => {
            eprintln!(
                "agent-vault: isolation: NONE enforced: {why}, and Landlock is unavailable ({e})"
            );
            format!("none: {why}, and Landlock is unavailable ({e})").replace('\n', " ")
        }
    };
    channel
        .write_all(format!("{said}\n").as_bytes())
        .map_err(|e| format!("cannot tell the supervisor: {e}"))?;
    let env = plan.proxy_env(&plan.proxy_tcp, Some(&userinfo));
    exec_command(&plan, env)
}

/// `AGENT:TOKEN` from the supervisor, and the channel to it.
fn fallback_token() -> Result<(String, std::os::unix::net::UnixStream), String> {
    let mut channel = channel::stdin_channel()?;
    // The plan's second copy (for an init that is not started) first.
    channel::read_frame(&mut channel)?;
    let err = |e: std::io::Error| format!("no token from the supervisor: {e}");
    channel.write_all(&[channel::TOKEN]).map_err(err)?;
    let mut line = String::new();
    // The supervisor sends nothing after the line until it reads ours.
    std::io::BufReader::new(&channel)
        .take(16 * 1024)
        .read_line(&mut line)
        .map_err(err)?;
    match line.strip_suffix('\n') {
        Some(userinfo) => Ok((userinfo.to_owned(), channel)),
        None => Err("no token from the supervisor".into()),
    }
}

/// Replaces this process with CMD, with the plan's environment.
pub(super) fn exec_command(
    plan: &Plan,
    proxy_env: Vec<(String, String)>,
) -> Result<ExitCode, String> {
    let (program, args) = plan.command.split_first().ok_or("run needs a command")?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    for k in &plan.env_remove {
        cmd.env_remove(k);
    }
    // Not the supervisor's channel.
    cmd.envs(plan.env.iter().cloned())
        .envs(proxy_env)
        .stdin(Stdio::null());
    let e = cmd.exec();
    Err(format!("cannot run {program}: {e}"))
}
