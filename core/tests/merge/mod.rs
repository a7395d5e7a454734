//! The manifest merge (`sync::merge_manifests`, and git's merge driver
//! around it), through core's public API: a side's change wins over no
//! change, ours wins when both changed an entry, grants never outlive their
//! agent or group, and revocations only accumulate.

use std::collections::{BTreeMap, BTreeSet};

use agent_vault_core::model::{
    AgentEntry, BrokerEntry, GroupEntry, Manifest, Mode, OwnerEntry, Revocations,
};
use agent_vault_core::sync::{merge_driver, merge_manifests};
use agent_vault_core::{AgentName, GroupName, OwnerName};
use proptest::prelude::*;

fn agent(s: &str) -> AgentName {
    s.parse().unwrap()
}

fn group(s: &str) -> GroupName {
    s.parse().unwrap()
}

/// A manifest with owner `o`, the given agents, groups (at generation 1)
/// and grants.
fn manifest(agents: &[&str], groups: &[&str], grants: &[(&str, &str, Mode)]) -> Manifest {
    let mut m = Manifest {
        format: 1,
        vault_id: "v".into(),
        owners: BTreeMap::new(),
        agents: BTreeMap::new(),
        groups: BTreeMap::new(),
        grants: BTreeMap::new(),
        broker: None,
        revoked: Revocations::default(),
    };
    m.owners.insert(
        "o".parse().unwrap(),
        OwnerEntry {
            recipient: "age1owner".into(),
            signing_key: "sk-o".into(),
        },
    );
    for a in agents {
        m.agents.insert(
            agent(a),
            AgentEntry {
                recipient: format!("age1{a}"),
                signing_key: None,
            },
        );
    }
    for g in groups {
        m.groups.insert(
            group(g),
            GroupEntry {
                recipient: format!("age1{g}-1"),
                generation: 1,
            },
        );
    }
    for (a, g, mode) in grants {
        m.grants
            .entry(agent(a))
            .or_default()
            .insert(group(g), *mode);
    }
    m
}

fn rotate(m: &mut Manifest, g: &str, generation: u64) {
    m.groups.insert(
        group(g),
        GroupEntry {
            recipient: format!("age1{g}-{generation}"),
            generation,
        },
    );
}

#[test]
fn both_sides_additions_are_kept() {
    let base = manifest(&["a"], &["g"], &[("a", "g", Mode::Read)]);
    let mut ours = base.clone();
    ours.agents.insert(
        agent("b"),
        AgentEntry {
            recipient: "age1b".into(),
            signing_key: None,
        },
    );
    ours.grants
        .entry(agent("b"))
        .or_default()
        .insert(group("g"), Mode::Use);
    let mut theirs = base.clone();
    rotate(&mut theirs, "h", 1);
    theirs
        .grants
        .entry(agent("a"))
        .or_default()
        .insert(group("h"), Mode::Read);
    let m = merge_manifests(Some(&base), &ours, &theirs);
    let want = manifest(
        &["a", "b"],
        &["g", "h"],
        &[
            ("a", "g", Mode::Read),
            ("a", "h", Mode::Read),
            ("b", "g", Mode::Use),
        ],
    );
    assert_eq!(m, want);
    // The same from the other side.
    assert_eq!(merge_manifests(Some(&base), &theirs, &ours), want);
}

#[test]
fn a_removal_wins_over_no_change_and_takes_its_grants_along() {
    let base = manifest(
        &["a", "b"],
        &["g", "h"],
        &[("a", "g", Mode::Read), ("b", "h", Mode::Read)],
    );
    // Ours removes agent a; theirs grants a more (so a's entry is unchanged there).
    let mut ours = base.clone();
    ours.agents.remove(&agent("a"));
    ours.grants.remove(&agent("a"));
    let mut theirs = base.clone();
    theirs
        .grants
        .entry(agent("a"))
        .or_default()
        .insert(group("h"), Mode::Use);
    let m = merge_manifests(Some(&base), &ours, &theirs);
    assert!(!m.agents.contains_key(&agent("a")));
    assert!(
        !m.grants.contains_key(&agent("a")),
        "a grant outlived its agent: {:?}",
        m.grants
    );
    // Theirs removes group h; ours still grants on it: the grant goes too.
    let mut theirs = base.clone();
    theirs.groups.remove(&group("h"));
    theirs.grants.remove(&agent("b"));
    let m = merge_manifests(Some(&base), &base, &theirs);
    assert!(!m.groups.contains_key(&group("h")));
    assert_eq!(m.grant(&agent("b"), &group("h")), None);
    assert_eq!(m.grant(&agent("a"), &group("g")), Some(Mode::Read));
}

#[test]
fn both_changed_means_ours_and_one_changed_means_that_one() {
    let base = manifest(&["a"], &["g", "h"], &[("a", "g", Mode::Read)]);
    let (mut ours, mut theirs) = (base.clone(), base.clone());
    // Both rotated g: ours stays. Only theirs rotated h: theirs is taken.
    rotate(&mut ours, "g", 2);
    rotate(&mut theirs, "g", 3);
    rotate(&mut theirs, "h", 2);
    // Both changed a's mode on g differently: ours. (Read → Use vs removed.)
    ours.grants
        .get_mut(&agent("a"))
        .unwrap()
        .insert(group("g"), Mode::Use);
    theirs.grants.remove(&agent("a"));
    let m = merge_manifests(Some(&base), &ours, &theirs);
    assert_eq!(m.groups[&group("g")], ours.groups[&group("g")]);
    assert_eq!(m.groups[&group("h")], theirs.groups[&group("h")]);
    assert_eq!(m.grant(&agent("a"), &group("g")), Some(Mode::Use));
    // Only theirs changed the mode: theirs.
    let mut theirs = base.clone();
    theirs
        .grants
        .get_mut(&agent("a"))
        .unwrap()
        .insert(group("g"), Mode::Use);
    let m = merge_manifests(Some(&base), &base, &theirs);
    assert_eq!(m.grant(&agent("a"), &group("g")), Some(Mode::Use));
}

#[test]
fn revocations_only_accumulate() {
    let mut base = manifest(&["a"], &["g"], &[]);
    base.revoked = Revocations {
        tokens: vec!["t0".into()],
        agents: [("a".to_owned(), 100)].into(),
        sessions: vec!["s0".into()],
        all_before: Some(10),
    };
    let (mut ours, mut theirs) = (base.clone(), base.clone());
    ours.revoked.tokens.push("t1".into());
    ours.revoked.agents.insert("a".into(), 300);
    ours.revoked.all_before = Some(50);
    theirs.revoked.tokens.push("t2".into());
    theirs.revoked.tokens.push("t1".into());
    theirs.revoked.agents.insert("a".into(), 200);
    theirs.revoked.agents.insert("b".into(), 5);
    theirs.revoked.sessions.push("s1".into());
    theirs.revoked.all_before = Some(70);
    let m = merge_manifests(Some(&base), &ours, &theirs);
    assert_eq!(m.revoked.tokens, ["t0", "t1", "t2"]);
    assert_eq!(
        m.revoked.agents,
        [("a".to_owned(), 300), ("b".to_owned(), 5)].into()
    );
    assert_eq!(m.revoked.sessions, ["s0", "s1"]);
    assert_eq!(m.revoked.all_before, Some(70));
    // A side that drops a revocation cannot undo it.
    let mut dropped = base.clone();
    dropped.revoked = Revocations::default();
    let m = merge_manifests(Some(&base), &dropped, &base);
    assert_eq!(m.revoked, base.revoked);
}

#[test]
fn broker_and_owners() {
    let base = manifest(&[], &[], &[]);
    let mut theirs = base.clone();
    theirs.broker = Some(BrokerEntry {
        recipient: "age1broker".into(),
        ca_sha256: "00".into(),
    });
    let o2: OwnerName = "p".parse().unwrap();
    theirs.owners.insert(
        o2.clone(),
        OwnerEntry {
            recipient: "age1p".into(),
            signing_key: "sk-p".into(),
        },
    );
    let m = merge_manifests(Some(&base), &base, &theirs);
    assert_eq!(m.broker, theirs.broker);
    assert!(m.owners.contains_key(&o2));
    let m = merge_manifests(Some(&theirs), &theirs, &base);
    assert_eq!(m.broker, None, "a side that removed the broker");
}

/// Both sides ran `broker init`: the merge keeps our `broker/` files (a
/// conflicting file keeps ours), so the manifest must name our broker too.
/// It used to name theirs: the merged vault's CA no longer matched its
/// manifest.
#[test]
fn both_sides_made_a_broker_keeps_ours() {
    let base = manifest(&[], &[], &[]);
    let mut theirs = base.clone();
    theirs.broker = Some(BrokerEntry {
        recipient: "age1broker".into(),
        ca_sha256: "00".into(),
    });
    let mut ours = base.clone();
    ours.broker = Some(BrokerEntry {
        recipient: "age1mine".into(),
        ca_sha256: "11".into(),
    });
    let m = merge_manifests(Some(&base), &ours, &theirs);
    assert_eq!(m.broker, ours.broker);
}

#[test]
fn no_common_ancestor_is_a_union_with_ours_first() {
    let mut ours = manifest(&["a"], &["g"], &[("a", "g", Mode::Read)]);
    let mut theirs = manifest(&["a", "b"], &["g"], &[("a", "g", Mode::Use)]);
    theirs.agents.get_mut(&agent("a")).unwrap().recipient = "age1other".into();
    ours.vault_id = "ours".into();
    theirs.vault_id = "theirs".into();
    let m = merge_manifests(None, &ours, &theirs);
    assert_eq!(m.vault_id, "ours");
    assert_eq!(m.agents[&agent("a")], ours.agents[&agent("a")]);
    assert!(m.agents.contains_key(&agent("b")));
    assert_eq!(m.grant(&agent("a"), &group("g")), Some(Mode::Read));
}

#[test]
fn the_merge_driver_writes_the_merge_into_ours() {
    let dir = tempfile::tempdir().unwrap();
    let (b, o, t) = (
        dir.path().join("base"),
        dir.path().join("ours"),
        dir.path().join("theirs"),
    );
    let base = manifest(&["a"], &["g"], &[]);
    let mut ours = base.clone();
    rotate(&mut ours, "h", 1);
    let mut theirs = base.clone();
    theirs
        .grants
        .entry(agent("a"))
        .or_default()
        .insert(group("g"), Mode::Read);
    let write = |p: &std::path::Path, m: &Manifest| {
        std::fs::write(p, serde_yaml_ng::to_string(m).unwrap()).unwrap();
    };
    write(&b, &base);
    write(&o, &ours);
    write(&t, &theirs);
    assert!(merge_driver(&b, &o, &t).unwrap());
    let merged: Manifest = serde_yaml_ng::from_slice(&std::fs::read(&o).unwrap()).unwrap();
    assert_eq!(merged, merge_manifests(Some(&base), &ours, &theirs));
    assert_eq!(merged.grant(&agent("a"), &group("g")), Some(Mode::Read));
    assert!(merged.groups.contains_key(&group("h")));

    // A side that does not parse is a conflict for git, and ours is left alone.
    std::fs::write(&t, "owners: [").unwrap();
    let before = std::fs::read(&o).unwrap();
    assert!(!merge_driver(&b, &o, &t).unwrap());
    assert_eq!(std::fs::read(&o).unwrap(), before);
    // A missing base is no common ancestor, not a failure.
    write(&t, &theirs);
    std::fs::remove_file(&b).unwrap();
    assert!(merge_driver(&b, &o, &t).unwrap());
}

/// A manifest over small universes, so that sides often share entries.
fn arb_manifest() -> impl Strategy<Value = Manifest> {
    let names = ["a", "b", "c", "d"];
    let groups = ["g", "h", "i"];
    (
        prop::collection::btree_map(prop::sample::select(names.to_vec()), 0u8..3, 0..4),
        prop::collection::btree_map(prop::sample::select(groups.to_vec()), 1u64..4, 0..3),
        prop::collection::vec(
            (
                prop::sample::select(names.to_vec()),
                prop::sample::select(groups.to_vec()),
                any::<bool>(),
            ),
            0..6,
        ),
        prop::collection::vec(prop::sample::select(vec!["t1", "t2", "t3"]), 0..3),
        prop::option::of(0i64..100),
    )
        .prop_map(|(agents, groups, grants, tokens, all_before)| {
            let mut m = manifest(&[], &[], &[]);
            for (a, r) in agents {
                m.agents.insert(
                    agent(a),
                    AgentEntry {
                        recipient: format!("age1{a}{r}"),
                        signing_key: None,
                    },
                );
            }
            for (g, generation) in groups {
                rotate(&mut m, g, generation);
            }
            for (a, g, read) in grants {
                if m.agents.contains_key(&agent(a)) && m.groups.contains_key(&group(g)) {
                    let mode = if read { Mode::Read } else { Mode::Use };
                    m.grants.entry(agent(a)).or_default().insert(group(g), mode);
                }
            }
            let mut seen = BTreeSet::new();
            m.revoked.tokens = tokens
                .into_iter()
                .filter(|t| seen.insert(*t))
                .map(str::to_owned)
                .collect();
            m.revoked.all_before = all_before;
            m
        })
}

/// The three-way rule for one entry.
fn expected<V: PartialEq + Clone>(b: Option<&V>, o: Option<&V>, t: Option<&V>) -> Option<V> {
    if o == t || t == b {
        o.cloned()
    } else if o == b {
        t.cloned()
    } else {
        o.cloned()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn merge_properties(base in arb_manifest(), ours in arb_manifest(), theirs in arb_manifest()) {
        let m = merge_manifests(Some(&base), &ours, &theirs);
        // Each agent and group follows the three-way rule.
        let agents: BTreeSet<_> = base.agents.keys().chain(ours.agents.keys()).chain(theirs.agents.keys()).collect();
        for a in agents {
            prop_assert_eq!(
                m.agents.get(a).cloned(),
                expected(base.agents.get(a), ours.agents.get(a), theirs.agents.get(a))
            );
        }
        let groups: BTreeSet<_> = base.groups.keys().chain(ours.groups.keys()).chain(theirs.groups.keys()).collect();
        for g in &groups {
            prop_assert_eq!(
                m.groups.get(*g).cloned(),
                expected(base.groups.get(*g), ours.groups.get(*g), theirs.groups.get(*g))
            );
        }
        // Every grant names an agent and a group the merge kept, and none is empty.
        for (a, gs) in &m.grants {
            prop_assert!(m.agents.contains_key(a), "grant of removed agent {}", a);
            prop_assert!(!gs.is_empty());
            for g in gs.keys() {
                prop_assert!(m.groups.contains_key(g), "grant on removed group {}", g);
            }
        }
        // Revocations of either side survive.
        for t in ours.revoked.tokens.iter().chain(&theirs.revoked.tokens) {
            prop_assert!(m.revoked.tokens.contains(t));
        }
        prop_assert_eq!(m.revoked.all_before, ours.revoked.all_before.max(theirs.revoked.all_before));
        let unique: BTreeSet<_> = m.revoked.tokens.iter().collect();
        prop_assert_eq!(unique.len(), m.revoked.tokens.len(), "a token listed twice");
    }

    /// A side with no change takes the other side whole; the same change
    /// on both sides is that change.
    #[test]
    fn unchanged_sides(base in arb_manifest(), side in arb_manifest()) {
        let mut base = base;
        base.revoked = Revocations::default();
        prop_assert_eq!(merge_manifests(Some(&base), &side, &base), side.clone());
        prop_assert_eq!(merge_manifests(Some(&base), &base, &side), side.clone());
        prop_assert_eq!(merge_manifests(Some(&base), &side, &side), side.clone());
        prop_assert_eq!(merge_manifests(None, &side, &side), side);
    }
}
