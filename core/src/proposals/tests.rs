use std::collections::BTreeMap;

use age::secrecy::{ExposeSecret, SecretBox};

use super::*;
use crate::broker::services::{Auth, Service};
use crate::crypto::Identity;
use crate::keystore::{KeySource, KeyStore};
use crate::model::Mode;
use crate::writer::{SetOptions, Writer};

struct Fixture {
    _tmp: tempfile::TempDir,
    vault: Vault,
    owner: KeySource,
    bot: Identity,
    eve: Identity,
}

/// A vault with `other/x` set, agents `bot` and `eve` (no grants).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let keys = KeyStore::at(tmp.path().join("home"));
    let made = crate::init::init(&tmp.path().join("v"), "alice".parse().unwrap(), keys).unwrap();
    let owner = KeySource::File(made.owner_key.clone());
    let mut w = Writer::open(&made.vault, &owner).unwrap();
    w.set(&"other/x".parse().unwrap(), b"x", &SetOptions::default())
        .unwrap();
    let bot = Identity::read_file(&w.add_agent(&"bot".parse().unwrap()).unwrap()).unwrap();
    let eve = Identity::read_file(&w.add_agent(&"eve".parse().unwrap()).unwrap()).unwrap();
    drop(w);
    Fixture {
        _tmp: tmp,
        vault: made.vault,
        owner,
        bot,
        eve,
    }
}

fn slot(path: &str) -> Slot {
    Slot {
        path: path.parse().unwrap(),
        description: "the API key".into(),
        obtain: "https://example.com/settings/keys".into(),
        action: Action::Set,
        kind: SlotKind::Static,
        value: None,
    }
}

fn draft() -> Draft {
    Draft {
        message: "I need the example API".into(),
        expires: None,
        services: vec![ProposedService {
            name: "example".into(),
            service: Service::new(
                vec!["api.example.com".into()],
                Auth::Bearer("example/key".parse().unwrap()),
            ),
        }],
        slots: vec![slot("example/key")],
    }
}

fn value(v: &[u8]) -> SecretValue {
    SecretBox::new(Box::new(v.to_vec()))
}

fn values(path: &str, v: &[u8]) -> Values {
    BTreeMap::from([(path.parse().unwrap(), value(v))])
}

fn read(f: &Fixture, path: &str) -> Vec<u8> {
    crate::Reader::open(&f.vault, &f.owner)
        .unwrap()
        .get(&path.parse().unwrap())
        .unwrap()
        .expose_secret()
        .clone()
}

/// Every blob reachable from the proposal branches, concatenated.
fn branch_bytes(f: &Fixture) -> Vec<u8> {
    let repo = VaultRepo::discover(f.vault.root()).unwrap().unwrap();
    let (found, _) = branch::found(&repo).unwrap();
    found
        .into_iter()
        .flat_map(|x| [x.signed.yaml, x.signed.sig].concat())
        .collect()
}

#[test]
fn propose_list_plan_approve() {
    let f = fixture();
    let s = submit(&f.vault, &f.bot, draft(), Values::new()).unwrap();
    assert!(!s.pushed);
    let id = s.proposal.id.to_string();
    let listing = list(&f.vault).unwrap();
    assert_eq!(listing.proposals.len(), 1);
    assert!(listing.refused.is_empty());
    assert_eq!(listing.proposals[0].1, Status::Pending);
    let p = verify(&f.vault, &id).unwrap();
    let plan = plan(&f.vault, &p).unwrap();
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.services[0].hosts, vec!["api.example.com".to_owned()]);
    assert!(!plan.services[0].replaces);
    assert_eq!(plan.grants.len(), 1);
    assert!(plan.grants[0].new_group);
    assert_eq!(plan.values_needed().len(), 1);
    // No value: refused, nothing changes.
    let e = approve(&f.vault, &f.owner, &id, Values::new()).unwrap_err();
    assert!(e.to_string().contains("needs a value"), "{e}");
    assert_eq!(load(&f.vault, &id).unwrap().1, Status::Pending);
    approve(
        &f.vault,
        &f.owner,
        &id,
        values("example/key", b"sk-owner-typed"),
    )
    .unwrap();
    assert_eq!(read(&f, "example/key"), b"sk-owner-typed");
    let m = f.vault.manifest().unwrap();
    assert_eq!(
        m.grant(&"bot".parse().unwrap(), &"example".parse().unwrap()),
        Some(Mode::Use)
    );
    assert!(
        Services::load(&f.vault)
            .unwrap()
            .services
            .contains_key("example")
    );
    assert!(matches!(
        status(&f.vault, &id).unwrap().1,
        Status::Approved { .. }
    ));
    // Decided: cannot be approved or denied again.
    assert!(deny(&f.vault, &f.owner, &id, "no").is_err());
    // One commit, with no value in its message; nothing pending.
    let repo = VaultRepo::discover(f.vault.root()).unwrap().unwrap();
    let head = repo.repo().head().unwrap().peel_to_commit().unwrap();
    let msg = head.message().unwrap().to_owned();
    assert!(msg.contains("approve proposal"), "{msg}");
    assert!(!msg.contains("sk-owner"));
    assert!(!f.vault.has_pending_operation());
    let report = crate::check::check(&f.vault, None);
    assert!(
        report.findings.iter().all(|x| x.kind != "orphan"),
        "{:?}",
        report.findings
    );
}

#[test]
fn an_agent_value_travels_encrypted_and_is_applied() {
    let f = fixture();
    let s = submit(
        &f.vault,
        &f.bot,
        draft(),
        values("example/key", b"sk-agent-found"),
    )
    .unwrap();
    let bytes = branch_bytes(&f);
    assert!(!bytes.windows(14).any(|w| w == b"sk-agent-found"));
    assert!(String::from_utf8_lossy(&bytes).contains("BEGIN AGE ENCRYPTED FILE"));
    let id = s.proposal.id.to_string();
    let plan = plan(&f.vault, &verify(&f.vault, &id).unwrap()).unwrap();
    assert!(plan.values_needed().is_empty());
    approve(&f.vault, &f.owner, &id, Values::new()).unwrap();
    assert_eq!(read(&f, "example/key"), b"sk-agent-found");
}

#[test]
fn deny_records_a_reason() {
    let f = fixture();
    let id = submit(&f.vault, &f.bot, draft(), Values::new())
        .unwrap()
        .proposal
        .id
        .to_string();
    assert!(deny(&f.vault, &f.owner, &id, "  ").is_err());
    deny(&f.vault, &f.owner, &id, "use the staging key instead").unwrap();
    match status(&f.vault, &id).unwrap().1 {
        Status::Denied { reason, by, .. } => {
            assert_eq!(reason, "use the staging key instead");
            assert_eq!(by.as_str(), "alice");
        }
        s => panic!("{s:?}"),
    }
    assert!(approve(&f.vault, &f.owner, &id, values("example/key", b"v")).is_err());
    assert!(f.vault.manifest().unwrap().grants.is_empty());
}

#[test]
fn a_forged_proposal_is_refused() {
    let f = fixture();
    // eve signs a proposal that names bot, and puts it on bot's branch.
    let mut p = submit(&f.vault, &f.bot, draft(), Values::new())
        .unwrap()
        .proposal;
    p.id = ProposalId::generate().unwrap();
    let forged = signed::SignedProposal::sign(&p, &f.eve.agent_signing_key());
    let repo = VaultRepo::discover(f.vault.root()).unwrap().unwrap();
    branch::publish(&repo, &p.agent, &p.id, &forged, TIMEOUT).unwrap();
    let listing = list(&f.vault).unwrap();
    assert_eq!(listing.proposals.len(), 1);
    assert_eq!(listing.refused.len(), 1);
    assert!(
        listing.refused[0].reason.contains("forged"),
        "{:?}",
        listing.refused
    );
    let e = approve(
        &f.vault,
        &f.owner,
        p.id.as_str(),
        values("example/key", b"v"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not signed by agent bot"), "{e}");
    // An owner key cannot propose; an unsigned decision counts for nothing.
    assert!(
        submit(
            &f.vault,
            &Identity::read_file(match &f.owner {
                KeySource::File(p) => p,
                _ => unreachable!(),
            })
            .unwrap(),
            draft(),
            Values::new()
        )
        .is_err()
    );
}

#[test]
fn a_planted_decision_is_ignored() {
    let f = fixture();
    let s = submit(&f.vault, &f.bot, draft(), Values::new()).unwrap();
    let p = &s.proposal;
    // bot writes "approved" with a key that is no owner's.
    let fake = Identity::generate();
    let d = decision::Decision::sign(
        f.vault.id(),
        &p.id,
        &p.agent,
        "0",
        decision::Verdict::Approved,
        "",
        &"alice".parse().unwrap(),
        &fake.signing_key(),
    );
    let path = f.vault.dir().join(decision::rel_path(&p.agent, &p.id));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, crate::yaml::to_yaml(&d)).unwrap();
    assert_eq!(status(&f.vault, p.id.as_str()).unwrap().1, Status::Pending);
}

#[test]
fn caps_hold() {
    let f = fixture();
    let mut d = draft();
    d.message = "x".repeat(MAX_MESSAGE_CHARS + 1);
    assert!(submit(&f.vault, &f.bot, d, Values::new()).is_err());
    let mut d = draft();
    d.slots = (0..=MAX_SLOTS)
        .map(|i| slot(&format!("example/k{i}")))
        .collect();
    assert!(
        submit(&f.vault, &f.bot, d, Values::new())
            .unwrap_err()
            .to_string()
            .contains("slots")
    );
    let mut d = draft();
    d.services = (0..=MAX_SERVICES)
        .map(|i| ProposedService {
            name: format!("s{i}"),
            service: Service::new(vec!["a.example.com".into()], Auth::Passthrough),
        })
        .collect();
    assert!(
        submit(&f.vault, &f.bot, d, Values::new())
            .unwrap_err()
            .to_string()
            .contains("services")
    );
    let mut d = draft();
    d.expires = Some(
        jiff::Timestamp::now()
            .checked_add(MAX_EXPIRY + jiff::SignedDuration::from_hours(2))
            .unwrap(),
    );
    assert!(submit(&f.vault, &f.bot, d, Values::new()).is_err());
    for _ in 0..MAX_PENDING_PER_AGENT {
        submit(&f.vault, &f.bot, draft(), Values::new()).unwrap();
    }
    let e = submit(&f.vault, &f.bot, draft(), Values::new()).unwrap_err();
    assert!(e.to_string().contains("pending"), "{e}");
    // Another agent is not held by bot's cap.
    submit(&f.vault, &f.eve, draft(), Values::new()).unwrap();
}

#[test]
fn an_expired_proposal_cannot_be_approved() {
    let f = fixture();
    let mut p = submit(&f.vault, &f.bot, draft(), Values::new())
        .unwrap()
        .proposal;
    p.id = ProposalId::generate().unwrap();
    p.created = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(48))
        .unwrap();
    p.expires = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap();
    let s = signed::SignedProposal::sign(&p, &f.bot.agent_signing_key());
    let repo = VaultRepo::discover(f.vault.root()).unwrap().unwrap();
    branch::publish(&repo, &p.agent, &p.id, &s, TIMEOUT).unwrap();
    assert_eq!(status(&f.vault, p.id.as_str()).unwrap().1, Status::Expired);
    let e = approve(
        &f.vault,
        &f.owner,
        p.id.as_str(),
        values("example/key", b"v"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}

#[test]
fn a_draft_with_a_plain_value_is_refused() {
    let yaml = b"message: hi\nslots:\n  - path: a/b\n    value: plain\n";
    let e = Draft::parse(std::path::Path::new("d.yaml"), yaml).unwrap_err();
    assert!(e.to_string().contains("never written in plain text"), "{e}");
}
