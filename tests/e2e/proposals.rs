//! Proposals (issue 14): an agent on its own clone asks, over a real bare
//! remote; the owner's sync brings the proposal; approval applies it in one
//! signed commit; denial gives a reason. Forgeries, agent-made approvals,
//! caps, and no value anywhere it should not be.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::harness::*;
use crate::remotes;

const VALUE: &str = "sk-live-proposed-VALUE-7f3a";

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o))
}

/// Runs the binary in `dir` with `home`, `--key key`, and `stdin`.
fn run_as(env: &Env, dir: &Path, home: &Path, key: &Path, args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut a = vec!["--key", key.to_str().unwrap()];
    a.extend(args);
    let mut child = env
        .cmd(&a)
        .current_dir(dir)
        .env("AGENT_VAULT_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Alice's vault on a bare repository; bot's clone. Returns (url, bare, clone dir, bot key).
fn team(env: &Env, url: &str, bare: &Path) -> (PathBuf, PathBuf) {
    ok(
        env.git_in(bare, &["init", "--bare", "-q"]),
        "git init --bare",
    );
    env.git(&["remote", "add", "origin", url]);
    env.set("other/x", b"x");
    let bot = env.add_agent("bot");
    ok(env.run(&["push"], b""), "push");
    let dir = env.tmp.path().join("agent");
    ok(
        env.git_in(env.tmp.path(), &["clone", "-q", url, dir.to_str().unwrap()]),
        "git clone",
    );
    (dir, bot)
}

fn propose_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "propose",
        "--message",
        "I need the example API to finish the task",
        "--service",
        "example",
        "--host",
        "api.example.com",
        "--bearer",
        "example/key",
        "--slot",
        "example/key",
        "--description",
        "example API key",
        "--obtain",
        "https://example.com/settings/keys",
    ];
    a.extend(extra);
    a
}

#[test]
fn an_agent_proposes_over_a_bare_remote_and_the_owner_approves_or_denies() {
    let env = Env::new();
    let srv = env.tmp.path().join("srv");
    let bare = srv.join("vault.git");
    std::fs::create_dir_all(&bare).unwrap();
    let daemon = remotes::git_daemon(&srv);
    let url = format!("git://127.0.0.1:{}/vault.git", daemon.port);
    let (agent, bot) = team(&env, &url, &bare);
    let ahome = env.tmp.path().join("agent-home");
    let mut outputs = Vec::new();

    // The agent proposes; the id is on stdout.
    let out = ok(
        run_as(&env, &agent, &ahome, &bot, &propose_args(&[]), b""),
        "propose",
    );
    let id = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(id.len(), 12, "{id}");
    outputs.push(out);
    let refs = String::from_utf8(
        env.git_in(&bare, &["for-each-ref", "--format=%(refname)"])
            .stdout,
    )
    .unwrap();
    assert!(
        refs.contains("refs/heads/agent-vault/proposals/bot"),
        "{refs}"
    );
    // Nothing reached the vault's branch.
    assert!(
        !String::from_utf8_lossy(&env.git_in(&bare, &["log", "--format=%s", "main"]).stdout)
            .contains("proposal")
    );

    // The owner's sync brings it; list and show.
    outputs.push(env.ok(&["sync"]));
    let list = env.ok(&["proposals", "list"]);
    assert!(
        text(&list).contains(&id) && text(&list).contains("pending"),
        "{}",
        text(&list)
    );
    let show = env.ok(&["proposals", "show", &id]);
    let s = text(&show);
    assert!(
        s.contains("api.example.com")
            && s.contains("grant   bot use on example")
            && s.contains("https://example.com/settings/keys"),
        "{s}"
    );
    let plan = env.json(&["proposals", "show", &id]);
    assert_eq!(plan["plan"]["grants"][0]["group"], "example");
    outputs.push(list);
    outputs.push(show);

    // No value: refused. With the value on stdin: applied in one commit.
    let no = env.run(&["proposals", "approve", &id], b"");
    assert!(
        !no.status.success() && stderr(&no).contains("no value for example/key"),
        "{}",
        stderr(&no)
    );
    let before = env.git(&["rev-list", "--count", "HEAD"]);
    let yes = ok(
        env.run(
            &["proposals", "approve", &id],
            format!("{VALUE}\n").as_bytes(),
        ),
        "approve",
    );
    outputs.push(yes);
    let after = env.git(&["rev-list", "--count", "HEAD"]);
    assert_eq!(
        after.trim().parse::<u32>().unwrap(),
        before.trim().parse::<u32>().unwrap() + 1
    );
    assert_eq!(env.get("example/key"), VALUE.as_bytes());
    outputs.push(env.ok(&["sync"]));

    // The agent pulls: it sees the grant and the service, and the status.
    let st = ok(
        run_as(
            &env,
            &agent,
            &ahome,
            &bot,
            &["proposals", "status", &id],
            b"",
        ),
        "status",
    );
    assert!(text(&st).contains("approved by alice"), "{}", text(&st));
    outputs.push(st);
    let m = std::fs::read_to_string(agent.join(".agent-vault/manifest.yaml")).unwrap();
    assert!(m.contains("example: use"), "{m}");
    let svc = std::fs::read_to_string(agent.join(".agent-vault/services.yaml")).unwrap();
    assert!(svc.contains("api.example.com"), "{svc}");
    // `use` only: the agent cannot read the value.
    let get = run_as(&env, &agent, &ahome, &bot, &["get", "example/key"], b"");
    assert!(!get.status.success());
    outputs.push(get);

    // A second proposal with a value the agent found, denied with a reason.
    let out = ok(
        run_as(
            &env,
            &agent,
            &ahome,
            &bot,
            &propose_args(&["--value-stdin"]),
            VALUE.as_bytes(),
        ),
        "propose --value-stdin",
    );
    let id2 = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned();
    outputs.push(out);
    outputs.push(env.ok(&["sync"]));
    outputs.push(env.ok(&[
        "proposals",
        "deny",
        &id2,
        "--reason",
        "use the staging key instead",
    ]));
    outputs.push(env.ok(&["sync"]));
    let st = ok(
        run_as(
            &env,
            &agent,
            &ahome,
            &bot,
            &["proposals", "status", &id2],
            b"",
        ),
        "status",
    );
    assert!(
        text(&st).contains("denied by alice") && text(&st).contains("use the staging key instead"),
        "{}",
        text(&st)
    );
    outputs.push(st);

    // The value never appears: not in any output, not in any git object of
    // the remote (proposal branch, commit messages) in plain text.
    for o in &outputs {
        assert!(!text(o).contains(VALUE), "value in output: {}", text(o));
    }
    let all = env.git_in(&bare, &["log", "--all", "-p", "--format=%B"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains(VALUE));
    let branch = String::from_utf8(
        env.git_in(&bare, &["log", "-p", "agent-vault/proposals/bot"])
            .stdout,
    )
    .unwrap();
    assert!(
        branch.contains("BEGIN AGE ENCRYPTED FILE"),
        "the agent's value travels encrypted"
    );
    assert!(found_in_files(env.tmp.path(), VALUE.as_bytes()).is_empty());
}

#[test]
fn forged_proposals_and_agent_made_approvals_are_refused() {
    let env = Env::new();
    let bare = env.tmp.path().join("srv/vault.git");
    std::fs::create_dir_all(&bare).unwrap();
    let url = format!("file://{}", bare.display());
    let (agent, bot) = team(&env, &url, &bare);
    let eve = env.add_agent("eve");
    ok(env.run(&["sync"], b""), "sync");
    let ahome = env.tmp.path().join("agent-home");
    ok(env.git_in(&agent, &["pull", "-q"]), "pull");

    // eve proposes, then puts her proposal on bot's branch: it names eve and
    // is signed by eve, so on bot's branch it is refused as a forgery.
    let out = ok(
        run_as(&env, &agent, &ahome, &eve, &propose_args(&[]), b""),
        "eve proposes",
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Bot's branch gets eve's files renamed as bot's (eve's signature kept).
    let wt = env.tmp.path().join("forge");
    ok(
        env.git_in(
            env.tmp.path(),
            &[
                "clone",
                "-q",
                "-b",
                "agent-vault/proposals/eve",
                &url,
                wt.to_str().unwrap(),
            ],
        ),
        "clone eve",
    );
    let yaml = std::fs::read_to_string(wt.join(format!("proposals/{id}.yaml"))).unwrap();
    std::fs::write(
        wt.join(format!("proposals/{id}.yaml")),
        yaml.replace("agent: eve", "agent: bot"),
    )
    .unwrap();
    let sig = std::fs::read_to_string(wt.join(format!("proposals/{id}.sig"))).unwrap();
    std::fs::write(
        wt.join(format!("proposals/{id}.sig")),
        sig.replace("agent: eve", "agent: bot"),
    )
    .unwrap();
    ok(env.git_in(&wt, &["commit", "-qam", "forge"]), "commit");
    ok(
        env.git_in(
            &wt,
            &[
                "push",
                "-q",
                "origin",
                "HEAD:refs/heads/agent-vault/proposals/bot",
            ],
        ),
        "push forged",
    );
    // And eve's branch no longer holds the real one (so the id is bot's only).
    ok(
        env.git_in(
            &wt,
            &[
                "push",
                "-q",
                "origin",
                ":refs/heads/agent-vault/proposals/eve",
            ],
        ),
        "delete eve's",
    );
    ok(env.run(&["sync"], b""), "sync");
    env.git(&[
        "update-ref",
        "-d",
        "refs/remotes/origin/agent-vault/proposals/eve",
    ]);
    let list = env.ok(&["proposals", "list"]);
    assert!(stderr(&list).contains("forged"), "{}", text(&list));
    let e = stderr(&env.run(
        &["proposals", "approve", &format!("bot/{id}")],
        format!("{VALUE}\n").as_bytes(),
    ));
    assert!(e.contains("not signed by agent bot's signing key"), "{e}");

    // bot proposes honestly; then "approves" itself on the vault branch: a
    // grant in the manifest and a decision file. The owner's sync refuses it.
    let out = ok(
        run_as(&env, &agent, &ahome, &bot, &propose_args(&[]), b""),
        "propose",
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dfile = agent.join(format!(".agent-vault/decisions/bot/{id}.yaml"));
    std::fs::create_dir_all(dfile.parent().unwrap()).unwrap();
    std::fs::write(&dfile, format!("id: {id}\nagent: bot\nproposal_sha256: x\nverdict: approved\nby: alice\nat: 2026-01-01T00:00:00Z\nsignature: AAAA\n")).unwrap();
    ok(env.git_in(&agent, &["add", "-A"]), "add");
    ok(
        env.git_in(&agent, &["commit", "-qm", "approved"]),
        "commit decision",
    );
    ok(
        env.git_in(&agent, &["push", "-q", "origin", "HEAD"]),
        "push decision",
    );
    ok(env.run(&["sync"], b""), "sync brings a file no one trusts");
    let st = env.ok(&["proposals", "status", &id]);
    assert!(
        text(&st).contains("pending"),
        "an unsigned decision counts for nothing: {}",
        text(&st)
    );
    let m = agent.join(".agent-vault/manifest.yaml");
    let t = std::fs::read_to_string(&m).unwrap();
    let t = if t.contains("grants: {}") {
        t.replace("grants: {}", "grants:\n  bot:\n    other: read")
    } else {
        format!("{t}grants:\n  bot:\n    other: read\n")
    };
    std::fs::write(&m, t).unwrap();
    ok(
        env.git_in(&agent, &["commit", "-qam", "approve myself"]),
        "commit",
    );
    ok(
        env.git_in(&agent, &["push", "-q", "origin", "HEAD"]),
        "push",
    );
    let err = stderr(&env.run(&["sync"], b""));
    assert!(
        err.contains("manifest is not trusted") && err.contains("incoming commit"),
        "{err}"
    );
    assert!(
        env.json(&["list-agents"])
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["grants"].as_object().unwrap().is_empty())
    );
}

#[test]
fn caps_expiry_and_keys_are_held() {
    // Agent and owner share the vault directory: the proposal is written
    // locally on the agent's branch.
    let env = Env::new();
    let bot = env.add_agent("bot");
    let bot = bot.to_str().unwrap();
    let long = "m".repeat(2001);
    let e = stderr(&env.run(
        &["--key", bot, "propose", "--message", &long, "--slot", "a/b"],
        b"",
    ));
    assert!(e.contains("longer than 2000"), "{e}");
    let e = stderr(&env.run(
        &["--key", bot, "propose", "--slot", "a/b", "--expires", "31d"],
        b"",
    ));
    assert!(e.contains("longer than 30 days"), "{e}");
    let slots: String = (0..11).map(|i| format!("  - path: a/k{i}\n")).collect();
    let f = env.tmp.path().join("d.yaml");
    std::fs::write(&f, format!("message: many\nslots:\n{slots}")).unwrap();
    let e = stderr(&env.run(
        &["--key", bot, "propose", "--file", f.to_str().unwrap()],
        b"",
    ));
    assert!(e.contains("more than 10 slots"), "{e}");
    let svcs: String = (0..11)
        .map(|i| {
            format!("  - name: s{i}\n    service: {{hosts: [a.example.com], auth: passthrough}}\n")
        })
        .collect();
    std::fs::write(&f, format!("message: many\nservices:\n{svcs}")).unwrap();
    let e = stderr(&env.run(
        &["--key", bot, "propose", "--file", f.to_str().unwrap()],
        b"",
    ));
    assert!(e.contains("more than 10 services"), "{e}");
    std::fs::write(&f, "slots:\n  - path: a/b\n    value: plain\n").unwrap();
    let e = stderr(&env.run(
        &["--key", bot, "propose", "--file", f.to_str().unwrap()],
        b"",
    ));
    assert!(e.contains("never written in plain text"), "{e}");
    // An owner key does not propose; approval needs an owner key.
    let e = stderr(&env.run(&["propose", "--slot", "a/b", "--agent", "nobody"], b""));
    assert!(!e.is_empty());
    for _ in 0..20 {
        env.ok(&["--key", bot, "propose", "--slot", "a/b", "--expires", "2d"]);
    }
    let e = stderr(&env.run(&["--key", bot, "propose", "--slot", "a/b"], b""));
    assert!(e.contains("20 proposals pending"), "{e}");
    let list = env.json(&["proposals", "list"]);
    let first = list["proposals"][0]["id"].as_str().unwrap().to_owned();
    let e = stderr(&env.run(&["--key", bot, "proposals", "approve", &first], b"v\n"));
    assert!(e.contains("owner key"), "{e}");
    ok(
        env.run(&["proposals", "approve", &first], b"v\n"),
        "approve",
    );
    // Decided: it no longer counts, so the agent may propose once more.
    env.ok(&["--key", bot, "propose", "--slot", "a/b"]);
}
