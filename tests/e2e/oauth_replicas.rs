//! OAuth state between two broker replicas that follow one bare remote
//! (DESIGN "OAuth credentials": the git push is the compare-and-swap). The
//! provider rotates refresh tokens and its API takes only the newest access
//! token, so two replicas that each refreshed on their own would fail each
//! other: one refresh must win, and the other replica must use what it won.

use std::path::Path;
use std::time::Duration;

use crate::broker::Proc;
use crate::oauth::{Setup, count, setup};

/// A broker in its own clone of `bare`, following it every 300 ms; its
/// port.
fn replica(s: &Setup, bare: &Path, name: &str) -> (Proc, u16) {
    let dir = s.env.tmp.path().join(name);
    let out = s.env.git_in(
        s.env.tmp.path(),
        &["clone", "-q", bare.to_str().unwrap(), dir.to_str().unwrap()],
    );
    assert!(out.status.success(), "git clone");
    let log = s.env.tmp.path().join(format!("{name}.log"));
    s.broker_in(Some(&dir), &log, &["--pull-interval", "300ms"])
}

/// The commits of `bare`'s branch, newest first (subjects).
fn subjects(s: &Setup, bare: &Path) -> Vec<String> {
    let out = s.env.git_in(bare, &["log", "--format=%s"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn oauth_two_replicas_due_at_once_refresh_once_and_both_use_the_winners_token() {
    let mut s = setup();
    // The owner's value: an access token of 302 s, due 2 s after it is set.
    s.control("POST", "/control/ttl/302");
    let pasted = s.refresh_token_from_the_provider();
    assert!(s.oauth_set("api/gh", &pasted).status.success());
    s.service();
    // Tokens from now on live an hour: what a replica is given is not due.
    s.control("POST", "/control/ttl/3600");
    let bare = s.env.push_to_bare();
    let (_a, port_a) = replica(&s, &bare, "replica-a");
    let (_b, port_b) = replica(&s, &bare, "replica-b");
    let token = s.token();
    std::thread::sleep(Duration::from_millis(2500));

    // Both replicas are asked at once: each finds the token due.
    let before = s.stats();
    let (on_a, on_b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| s.through_broker(port_a, &token, 10));
        let b = scope.spawn(|| s.through_broker(port_b, &token, 10));
        (a.join().unwrap(), b.join().unwrap())
    });
    let after = s.stats();
    for (status, body) in on_a.iter().chain(&on_b) {
        assert_eq!(*status, 200, "{body}");
        assert!(body.contains("[REDACTED:api/gh]"), "{body}");
    }
    // One refresh won at the provider; the other replica's was refused (the
    // token was spent) and it took the winner's state from the remote.
    assert_eq!(
        count(&after, "refresh_ok") - count(&before, "refresh_ok"),
        1,
        "{after}"
    );
    // (Two asked when both refreshed at once; one when the loser's pull
    // brought the winner's state before it began.)
    let asked = count(&after, "refreshes") - count(&before, "refreshes");
    assert!((1..=2).contains(&asked), "{after}");
    let published = subjects(&s, &bare);
    assert_eq!(
        published
            .iter()
            .filter(|m| m.contains("OAuth state of api/gh"))
            .count(),
        1,
        "{published:?}"
    );

    // Later requests on either replica use that one token: no refresh.
    let settled = s.stats();
    for port in [port_a, port_b] {
        for (status, body) in s.through_broker(port, &token, 3) {
            assert_eq!(status, 200, "{body}");
        }
    }
    assert_eq!(count(&s.stats(), "refreshes"), count(&settled, "refreshes"));

    // The owner's clone takes the broker's commit like any other, and the
    // vault checks out.
    assert!(s.env.run(&["sync"], b"").status.success());
    s.env.ok(&["check"]);
    let state = s.env.vault.join(".agent-vault/broker/state/api/gh.age");
    assert!(state.is_file());
    for dir in ["replica-a", "replica-b"] {
        let clean = s
            .env
            .git_in(&s.env.tmp.path().join(dir), &["status", "--porcelain"]);
        assert_eq!(String::from_utf8_lossy(&clean.stdout), "", "{dir}");
    }
}
