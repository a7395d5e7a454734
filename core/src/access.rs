//! The one access decision: may this principal read a group's values (see
//! them), or have them used for it (injected by the broker into a request,
//! never seen)? Answered from the verified manifest's owners, grants and
//! broker, here only: the reader, the broker and the MCP server all ask this
//! module.
//!
//! | who | `read` | `use` |
//! |---|---|---|
//! | an owner | yes | yes |
//! | an agent with a `read` grant | yes | yes |
//! | an agent with a `use` grant | [`Error::UseOnly`] | yes |
//! | an agent with no grant | [`Error::NotGranted`] | [`Error::NotGranted`] |
//! | the broker | when some agent may use the group | the same |
//!
//! The broker holds no grant of its own: it decrypts a group only because
//! some agent may use it, and only to inject it for that agent.

use crate::error::{Error, Result};
use crate::model::{Manifest, Mode};
use crate::names::GroupName;
use crate::vault::Role;

/// The name the broker goes by in a refusal.
const BROKER: &str = "the broker";

/// The grant `who` holds on `group`, as `list` and `whoami` show it: owners
/// read everything, an agent holds what the manifest grants it, the broker
/// holds none.
pub fn granted(manifest: &Manifest, who: &Role, group: &GroupName) -> Option<Mode> {
    match who {
        Role::Owner(_) => Some(Mode::Read),
        Role::Agent(a) => manifest.grant(a, group),
        Role::Broker => None,
    }
}

/// Whether `who` may do `want` with `group`'s secrets: [`Mode::Read`] to
/// see a value, [`Mode::Use`] to have it injected into a request through a
/// service. `Ok` carries the grant that allows it (the broker's is `Use`);
/// a refusal is [`Error::UseOnly`] or [`Error::NotGranted`], naming the
/// agent and the group.
pub fn check(manifest: &Manifest, who: &Role, group: &GroupName, want: Mode) -> Result<Mode> {
    let refuse = |agent: &str| Error::NotGranted {
        agent: agent.to_owned(),
        group: group.to_string(),
    };
    let agent = match who {
        Role::Broker if manifest.used(group) => return Ok(Mode::Use),
        Role::Broker => return Err(refuse(BROKER)),
        Role::Owner(_) => return Ok(Mode::Read),
        Role::Agent(a) => a,
    };
    match (manifest.grant(agent, group), want) {
        (Some(Mode::Read), _) => Ok(Mode::Read),
        (Some(Mode::Use), Mode::Use) => Ok(Mode::Use),
        (Some(Mode::Use), Mode::Read) => Err(Error::UseOnly {
            agent: agent.to_string(),
            group: group.to_string(),
        }),
        (None, _) => Err(refuse(agent.as_str())),
    }
}

/// [`check`] for an agent known by name only (a token's subject): a name
/// that is no agent name holds no grant.
pub fn check_agent(
    manifest: &Manifest,
    agent: &str,
    group: &GroupName,
    want: Mode,
) -> Result<Mode> {
    match agent.parse() {
        Ok(a) => check(manifest, &Role::Agent(a), group, want),
        Err(_) => Err(Error::NotGranted {
            agent: agent.to_owned(),
            group: group.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::AgentName;

    /// A manifest where `r` reads `g`, `u` uses `g`, `n` holds nothing, and
    /// `h` uses only `other` (so the broker may open `other`, not `quiet`).
    fn manifest(with_use: bool) -> Manifest {
        let grant = |g: &str, m: Mode| -> (GroupName, Mode) { (g.parse().unwrap(), m) };
        let agent = |a: &str| -> AgentName { a.parse().unwrap() };
        let mut grants = std::collections::BTreeMap::new();
        grants.insert(agent("r"), [grant("g", Mode::Read)].into());
        if with_use {
            grants.insert(agent("u"), [grant("g", Mode::Use)].into());
        }
        grants.insert(agent("h"), [grant("other", Mode::Use)].into());
        Manifest {
            format: crate::model::FORMAT_VERSION,
            vault_id: "v".into(),
            owners: Default::default(),
            agents: Default::default(),
            groups: Default::default(),
            grants,
            broker: None,
            revoked: Default::default(),
        }
    }

    fn who(s: &str) -> Role {
        match s {
            "owner" => Role::Owner("alice".parse().unwrap()),
            "broker" => Role::Broker,
            a => Role::Agent(a.parse().unwrap()),
        }
    }

    /// Every role × mode, with and without an agent that may use the group.
    #[test]
    fn every_role_and_mode() {
        let g: GroupName = "g".parse().unwrap();
        // (with a use grant on g, who, want, outcome: Ok(mode) or the error's name)
        let cases: &[(bool, &str, Mode, std::result::Result<Mode, &str>)] = &[
            (true, "owner", Mode::Read, Ok(Mode::Read)),
            (true, "owner", Mode::Use, Ok(Mode::Read)),
            (true, "r", Mode::Read, Ok(Mode::Read)),
            (true, "r", Mode::Use, Ok(Mode::Read)),
            (true, "u", Mode::Read, Err("UseOnly u")),
            (true, "u", Mode::Use, Ok(Mode::Use)),
            (true, "n", Mode::Read, Err("NotGranted n")),
            (true, "n", Mode::Use, Err("NotGranted n")),
            (true, "h", Mode::Read, Err("NotGranted h")),
            (true, "h", Mode::Use, Err("NotGranted h")),
            (true, "broker", Mode::Read, Ok(Mode::Use)),
            (true, "broker", Mode::Use, Ok(Mode::Use)),
            (false, "broker", Mode::Read, Err("NotGranted the broker")),
            (false, "broker", Mode::Use, Err("NotGranted the broker")),
            (false, "owner", Mode::Read, Ok(Mode::Read)),
            (false, "r", Mode::Use, Ok(Mode::Read)),
        ];
        for (with_use, w, want, expected) in cases {
            let m = manifest(*with_use);
            let got = check(&m, &who(w), &g, *want).map_err(|e| match e {
                Error::UseOnly { agent, group } if group == "g" => format!("UseOnly {agent}"),
                Error::NotGranted { agent, group } if group == "g" => format!("NotGranted {agent}"),
                other => format!("unexpected {other}"),
            });
            assert_eq!(
                got,
                expected.map_err(str::to_owned),
                "{w} wants {want} (use grant on g: {with_use})"
            );
        }
    }

    #[test]
    fn what_is_shown_as_granted() {
        let m = manifest(true);
        let g: GroupName = "g".parse().unwrap();
        assert_eq!(granted(&m, &who("owner"), &g), Some(Mode::Read));
        assert_eq!(granted(&m, &who("r"), &g), Some(Mode::Read));
        assert_eq!(granted(&m, &who("u"), &g), Some(Mode::Use));
        assert_eq!(granted(&m, &who("n"), &g), None);
        // The broker opens g, but holds no grant to show.
        assert_eq!(granted(&m, &who("broker"), &g), None);
    }

    #[test]
    fn an_agent_by_name() {
        let m = manifest(true);
        let g: GroupName = "g".parse().unwrap();
        assert_eq!(check_agent(&m, "u", &g, Mode::Use).unwrap(), Mode::Use);
        assert!(matches!(
            check_agent(&m, "u", &g, Mode::Read),
            Err(Error::UseOnly { .. })
        ));
        // Not a name any agent can have: no grant, and the refusal names it as given.
        match check_agent(&m, "Not An Agent", &g, Mode::Use) {
            Err(Error::NotGranted { agent, group }) => {
                assert_eq!((agent.as_str(), group.as_str()), ("Not An Agent", "g"))
            }
            other => panic!("{other:?}"),
        }
    }
}
