//! Property tests (proptest) for the parsers of the vault's signed files:
//! `manifest.yaml`, `manifest.sig`, `config.yaml` and each `.meta.yaml`.
//! Arbitrary bytes and arbitrarily nested YAML never panic and are refused
//! before the YAML parser sees anything nested too deep; a valid manifest
//! and valid metadata survive a round trip unchanged.

#![allow(clippy::unwrap_used)]

// More sections of core's one test binary: the manifest merge, and values'
// round trips (age, dotenv).
mod merge;
mod values;

use std::collections::BTreeMap;
use std::path::Path;

use agent_vault_core::crypto::Identity;
use agent_vault_core::model::{
    self, AgentEntry, Config, GroupEntry, MAX_YAML_DEPTH, Manifest, ManifestSig, MetaFields,
    MetaTrust, Mode, OwnerEntry, Revocations, SecretMeta,
};
use agent_vault_core::{AgentName, GroupName, OwnerName, SecretPath};
use proptest::prelude::*;

/// Feeds bytes to every parser of a vault file; none may panic.
fn parse_all(bytes: &[u8]) {
    let p = Path::new("x.yaml");
    let _ = model::parse_yaml::<Manifest>(p, bytes);
    let _ = model::parse_yaml::<ManifestSig>(p, bytes);
    let _ = model::parse_yaml::<SecretMeta>(p, bytes);
    let _ = Config::parse(p, bytes);
    let _ = model::check_yaml_shape(bytes);
}

/// A YAML tree to render in block or flow style.
#[derive(Debug, Clone)]
enum Node {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn depth(&self) -> usize {
        match self {
            Node::Scalar(_) => 0,
            Node::Seq(v) => 1 + v.iter().map(Node::depth).max().unwrap_or(0),
            Node::Map(v) => 1 + v.iter().map(|(_, n)| n.depth()).max().unwrap_or(0),
        }
    }

    fn flow(&self, out: &mut String) {
        match self {
            Node::Scalar(s) => out.push_str(s),
            Node::Seq(v) => {
                out.push('[');
                for (i, n) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    n.flow(out);
                }
                out.push(']');
            }
            Node::Map(v) => {
                out.push('{');
                for (i, (k, n)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(k);
                    out.push_str(": ");
                    n.flow(out);
                }
                out.push('}');
            }
        }
    }

    /// Block style; empty collections fall back to flow (`[]`, `{}`).
    fn block(&self, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        match self {
            Node::Seq(v) if !v.is_empty() => {
                for n in v {
                    out.push_str(&pad);
                    out.push('-');
                    n.block_child(indent, out);
                }
            }
            Node::Map(v) if !v.is_empty() => {
                for (k, n) in v {
                    out.push_str(&pad);
                    out.push_str(k);
                    out.push(':');
                    n.block_child(indent, out);
                }
            }
            other => {
                out.push_str(&pad);
                other.flow(out);
                out.push('\n');
            }
        }
    }

    fn block_child(&self, indent: usize, out: &mut String) {
        let nested = match self {
            Node::Seq(v) => !v.is_empty(),
            Node::Map(v) => !v.is_empty(),
            Node::Scalar(_) => false,
        };
        if nested {
            out.push('\n');
            self.block(indent + 2, out);
        } else {
            out.push(' ');
            self.flow(out);
            out.push('\n');
        }
    }
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = "[a-z][a-z0-9]{0,6}".prop_map(Node::Scalar);
    leaf.prop_recursive(80, 400, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Node::Seq),
            prop::collection::vec(("[a-z]{1,4}", inner), 1..3).prop_map(|v| {
                // Unique keys: a duplicate key is an error of its own.
                Node::Map(
                    v.into_iter()
                        .enumerate()
                        .map(|(i, (k, n))| (format!("{k}{i}"), n))
                        .collect(),
                )
            }),
        ]
    })
}

/// A chain nested `depth` levels deep, so deep documents are common.
fn deep_chain() -> impl Strategy<Value = Node> {
    (1usize..120, any::<bool>()).prop_map(|(depth, map)| {
        let mut n = Node::Scalar("x".into());
        for _ in 0..depth {
            n = if map {
                Node::Map(vec![("k".into(), n)])
            } else {
                Node::Seq(vec![n])
            };
        }
        n
    })
}

fn check_nested(n: &Node, flow: bool) {
    let mut text = String::new();
    if flow {
        n.flow(&mut text);
        text.push('\n');
    } else {
        n.block(0, &mut text);
    }
    let bytes = text.as_bytes();
    parse_all(bytes);
    let shape = model::check_yaml_shape(bytes);
    let parsed = model::parse_yaml::<serde_yaml_ng::Value>(Path::new("x.yaml"), bytes);
    if n.depth() > MAX_YAML_DEPTH {
        assert!(shape.is_err(), "depth {} let through:\n{text}", n.depth());
        assert!(parsed.is_err());
    } else if n.depth() < MAX_YAML_DEPTH {
        // The pre-scan never refuses a document within the limit.
        assert!(
            shape.is_ok(),
            "depth {} refused: {shape:?}\n{text}",
            n.depth()
        );
        assert!(parsed.is_ok(), "{parsed:?}\n{text}");
    }
}

struct Keys {
    owners: Vec<Identity>,
    agents: Vec<Identity>,
}

fn keys() -> &'static Keys {
    static K: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    K.get_or_init(|| Keys {
        owners: (0..3).map(|_| Identity::generate()).collect(),
        agents: (0..4).map(|_| Identity::generate()).collect(),
    })
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,12}"
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        prop::collection::btree_map(name(), 0usize..3, 1..3),
        prop::collection::btree_map(name(), 0usize..4, 0..4),
        prop::collection::btree_map(name(), (0usize..4, 1u64..1000), 0..4),
        prop::collection::vec((0usize..4, 0usize..4, any::<bool>()), 0..6),
        prop::collection::vec("[a-zA-Z0-9_-]{1,20}", 0..3),
        prop::option::of(0i64..4_000_000_000),
    )
        .prop_map(|(owners, agents, groups, grants, tokens, all_before)| {
            let k = keys();
            let owners: BTreeMap<OwnerName, OwnerEntry> = owners
                .into_iter()
                .map(|(n, i)| {
                    (
                        n.parse().unwrap(),
                        OwnerEntry {
                            recipient: k.owners[i].recipient().to_string(),
                            signing_key: k.owners[i].signing_key().public(),
                        },
                    )
                })
                .collect();
            let agents: BTreeMap<AgentName, AgentEntry> = agents
                .into_iter()
                .map(|(n, i)| {
                    (
                        n.parse().unwrap(),
                        AgentEntry {
                            recipient: k.agents[i].recipient().to_string(),
                            signing_key: None,
                        },
                    )
                })
                .collect();
            let groups: BTreeMap<GroupName, GroupEntry> = groups
                .into_iter()
                .map(|(n, (i, generation))| {
                    (
                        n.parse().unwrap(),
                        GroupEntry {
                            recipient: k.agents[i].recipient().to_string(),
                            generation,
                        },
                    )
                })
                .collect();
            let mut g: BTreeMap<AgentName, BTreeMap<GroupName, Mode>> = BTreeMap::new();
            let (an, gn): (Vec<_>, Vec<_>) = (
                agents.keys().cloned().collect(),
                groups.keys().cloned().collect(),
            );
            for (a, gr, read) in grants {
                if let (Some(a), Some(gr)) =
                    (an.get(a % an.len().max(1)), gn.get(gr % gn.len().max(1)))
                {
                    g.entry(a.clone())
                        .or_default()
                        .insert(gr.clone(), if read { Mode::Read } else { Mode::Use });
                }
            }
            Manifest {
                format: model::FORMAT_VERSION,
                vault_id: "0123abcd-vault".into(),
                owners,
                agents,
                groups,
                grants: g,
                broker: None,
                revoked: Revocations {
                    tokens,
                    all_before,
                    ..Revocations::default()
                },
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        parse_all(&bytes);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[-\\[\\]{}:,?&*!|>'\" #\na-z0-9\t]{0,600}") {
        parse_all(text.as_bytes());
    }

    #[test]
    fn nested_yaml_is_bounded(n in prop_oneof![node(), deep_chain()], flow in any::<bool>()) {
        check_nested(&n, flow);
    }

    #[test]
    fn manifest_round_trip_is_identity(m in manifest()) {
        let bytes = model::to_yaml(&m);
        let back: Manifest = model::parse_yaml(Path::new("manifest.yaml"), &bytes).unwrap();
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(model::to_yaml(&back), bytes);
        back.validate(Path::new("manifest.yaml")).unwrap();
    }

    #[test]
    fn metadata_round_trip_keeps_its_signature(
        description in prop::option::of(any::<String>()),
        expires in prop::option::of(0i64..4_000_000_000),
        ct in prop::collection::vec(any::<u8>(), 0..64),
        generation in 1u64..100,
    ) {
        let k = keys();
        let owner = &k.owners[0];
        let mut m = Manifest {
            format: model::FORMAT_VERSION,
            vault_id: "v".into(),
            owners: BTreeMap::new(),
            agents: BTreeMap::new(),
            groups: BTreeMap::new(),
            grants: BTreeMap::new(),
            broker: None,
            revoked: Revocations::default(),
        };
        m.owners.insert("o".parse().unwrap(), OwnerEntry {
            recipient: owner.recipient().to_string(),
            signing_key: owner.signing_key().public(),
        });
        let path: SecretPath = "g/name".parse().unwrap();
        let now = jiff::Timestamp::now();
        let fields = MetaFields {
            created: now,
            updated: now,
            expires: expires.map(|s| jiff::Timestamp::from_second(s).unwrap()),
            description: description.clone(),
        };
        let meta = SecretMeta::sign(fields, &owner.signing_key(), "v", &path, &ct, generation);
        let bytes = model::to_yaml(&meta);
        prop_assert!(model::check_yaml_shape(&bytes).is_ok());
        let back: SecretMeta = model::parse_yaml(Path::new("x.meta.yaml"), &bytes).unwrap();
        prop_assert_eq!(&back, &meta);
        prop_assert_eq!(back.verify("v", &path, &ct, &m, &[generation]).unwrap(), MetaTrust::Signed);
        // Any change to the description or expiry breaks the signature.
        let mut edited = back.clone();
        edited.description = Some(format!("{}x", description.unwrap_or_default()));
        prop_assert!(edited.verify_signature("v", &path, &m).is_err());
        let mut edited = back;
        edited.expires = None;
        if expires.is_some() {
            prop_assert!(edited.verify_signature("v", &path, &m).is_err());
        }
    }
}

#[test]
fn deep_documents_are_refused_before_parsing() {
    // 120 KB of nesting, in each style an attacker might push.
    let flow = "[".repeat(60_000) + &"]".repeat(60_000);
    let compact = "- ".repeat(60_000) + "x\n";
    let mut block = String::new();
    for i in 0..400 {
        block.push_str(&" ".repeat(i));
        block.push_str("k:\n");
    }
    for doc in [flow, compact, block] {
        let err = model::parse_yaml::<Manifest>(Path::new("manifest.yaml"), doc.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest.yaml"), "{err}");
        assert!(err.contains("nested more than"), "{err}");
    }
    let big = vec![b'a'; model::MAX_YAML_BYTES + 1];
    assert!(model::check_yaml_shape(&big).is_err());
}

#[test]
fn block_scalars_and_quotes_are_not_nesting() {
    let desc = "line\n".to_owned() + &(0..60).map(|i| " ".repeat(i) + "[{\n").collect::<String>();
    let doc = format!(
        "a: |\n{}\nb: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['\nc: \"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\"\nd: x # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
        desc.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    model::check_yaml_shape(doc.as_bytes()).unwrap();
    let v: serde_yaml_ng::Value = model::parse_yaml(Path::new("x"), doc.as_bytes()).unwrap();
    assert!(v.get("d").is_some());
}
