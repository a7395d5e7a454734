//! Git servers on loopback, started and stopped by the tests: `git daemon`
//! and `sshd` with key authentication.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server on port {port} did not start");
}

/// `git daemon` serving (and accepting pushes to) every repository below `base`.
pub fn git_daemon(base: &Path) -> Server {
    let port = free_port();
    // The daemon itself, not the `git` wrapper (which would leave it running
    // when killed).
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let exec_path = PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim());
    let mut child = Command::new(exec_path.join("git-daemon"))
        .args([
            "--export-all",
            "--enable=receive-pack",
            "--reuseaddr",
            "--listen=127.0.0.1",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", base.display()))
        .arg(base)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    wait_for(port, &mut child);
    Server { child, port }
}

/// An sshd on loopback that accepts only `client_key` (for the current user).
pub struct Ssh {
    pub server: Server,
    /// A `GIT_SSH_COMMAND` that uses the authorized key.
    pub git_ssh: String,
    /// One that uses a key the server does not know.
    pub git_ssh_wrong: String,
}

pub fn sshd(dir: &Path) -> Option<Ssh> {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())?;
    std::fs::create_dir_all(dir).unwrap();
    let keygen = |name: &str| {
        let p = dir.join(name);
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        p
    };
    let host = keygen("host");
    let client = keygen("client");
    let wrong = keygen("wrong");
    std::fs::copy(client.with_extension("pub"), dir.join("authorized_keys")).unwrap();
    // sshd needs its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
             StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n",
            host.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(&sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sshd");
    wait_for(port, &mut child);
    let cmd = |key: &Path| {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p {port}",
            key.display()
        )
    };
    Some(Ssh {
        git_ssh: cmd(&client),
        git_ssh_wrong: cmd(&wrong),
        server: Server { child, port },
    })
}

pub fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
