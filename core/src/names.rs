//! Validated names. Every agent, group and secret name that reaches the file
//! system has passed through one of these types, so nothing like `..`, an
//! absolute path or an empty segment can ever become a path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The longest agent or group name: `[a-z0-9][a-z0-9_-]{0,62}`.
const MAX_SIMPLE_LEN: usize = 63;
/// The longest segment of a secret name, leaving room for `.meta.yaml` and a
/// temporary-file prefix within a file system's 255-byte component limit.
const MAX_SEGMENT_LEN: usize = 200;
/// The longest secret name (below the group).
const MAX_SECRET_NAME_LEN: usize = 1024;

fn check_simple(kind: &'static str, s: &str) -> Result<()> {
    let bytes = s.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_SIMPLE_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind,
            name: s.to_owned(),
            rule: "1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
        })
    }
}

macro_rules! simple_name {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                check_simple($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

simple_name!(
    /// An agent's name: `[a-z0-9][a-z0-9_-]{0,62}`.
    AgentName,
    "agent"
);
simple_name!(
    /// A group's name: `[a-z0-9][a-z0-9_-]{0,62}`.
    GroupName,
    "group"
);
simple_name!(
    /// An owner's name: `[a-z0-9][a-z0-9_-]{0,62}`.
    OwnerName,
    "owner"
);

/// A secret's path: `group/name`, where `name` is one or more segments of
/// `[A-Za-z0-9][A-Za-z0-9._-]*` joined by `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretPath {
    group: GroupName,
    name: String,
}

impl SecretPath {
    /// Builds a path from a group and a name, validating the name.
    pub fn new(group: GroupName, name: &str) -> Result<Self> {
        check_secret_name(name).map_err(|rule| Error::InvalidName {
            kind: "secret",
            name: format!("{group}/{name}"),
            rule,
        })?;
        Ok(Self {
            group,
            name: name.to_owned(),
        })
    }

    /// The group the secret belongs to.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The secret's name within its group (may contain `/`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

const SECRET_RULE: &str = "GROUP/NAME, where GROUP is 1 to 63 characters of a-z, 0-9, '_' and '-', \
and NAME is one or more '/'-separated segments of A-Z, a-z, 0-9, '.', '_' and '-', \
each starting with a letter or digit";

fn check_secret_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_SECRET_NAME_LEN {
        return Err(SECRET_RULE);
    }
    for seg in name.split('/') {
        let b = seg.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_SEGMENT_LEN
            && b[0].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if !ok {
            return Err(SECRET_RULE);
        }
    }
    Ok(())
}

/// Whether `segment` may stand as one segment of a secret name (used to
/// validate keys of an imported dotenv file).
pub fn is_valid_secret_segment(segment: &str) -> bool {
    !segment.contains('/') && check_secret_name(segment).is_ok()
}

impl FromStr for SecretPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidName {
            kind: "secret",
            name: s.to_owned(),
            rule: SECRET_RULE,
        };
        let (group, name) = s.split_once('/').ok_or_else(invalid)?;
        let group: GroupName = group.parse().map_err(|_| invalid())?;
        check_secret_name(name).map_err(|_| invalid())?;
        Ok(Self {
            group,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.name)
    }
}

impl fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}/{}\"", self.group, self.name)
    }
}

impl Serialize for SecretPath {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SecretPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A proposal's id: 12 lowercase hex digits, random.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(String);

impl ProposalId {
    /// A fresh random id.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b)
            .map_err(|e| Error::InvalidInput(format!("no randomness for a proposal id: {e}")))?;
        Ok(ProposalId(hex::encode(b)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id a file named `<id>.yaml` is for (a proposal, a decision).
    pub fn of_yaml_file(name: &str) -> Option<Self> {
        name.strip_suffix(".yaml")?.parse().ok()
    }
}

impl FromStr for ProposalId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() == 12
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ProposalId(s.to_owned()))
        } else {
            Err(Error::InvalidInput(format!(
                "\"{}\" is not a proposal id (12 hex digits, as `agent-vault proposals list` shows)",
                s.escape_debug()
            )))
        }
    }
}

impl fmt::Display for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ProposalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for ProposalId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProposalId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_names() {
        for ok in ["a", "bot", "my-bot_2", "0", &"a".repeat(63)] {
            assert!(ok.parse::<AgentName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Bot",
            "-a",
            "_a",
            "a/b",
            "..",
            ".a",
            "a.b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<AgentName>().is_err(), "{bad}");
            assert!(bad.parse::<GroupName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_paths() {
        for ok in ["g/a", "g/A.b-c_d", "g/a/b/c", "stripe/API_KEY", "g/a..b"] {
            let p: SecretPath = ok.parse().unwrap();
            assert_eq!(p.to_string(), ok);
        }
        for bad in [
            "g",
            "g/",
            "/a",
            "g//a",
            "g/a/",
            "g/../a",
            "g/..",
            "g/.hidden",
            "G/a",
            "../g/a",
            "g/a b",
            "g/a\\b",
            "g/-a",
            "g/a/.",
            "g/\0",
        ] {
            assert!(bad.parse::<SecretPath>().is_err(), "{bad}");
        }
        let long = format!("g/{}", "a".repeat(201));
        assert!(long.parse::<SecretPath>().is_err());
    }
}

/// The name rules at their edges, and as properties: anything that parses
/// prints back as itself and can never become a path outside its place.
#[cfg(test)]
mod name_rules {
    use super::*;
    use proptest::prelude::*;

    /// What every accepted secret path must hold, whatever the input was.
    fn assert_safe(input: &str, p: &SecretPath) {
        assert_eq!(p.to_string(), input, "display is not the input");
        assert!(input.is_ascii(), "{input:?}");
        assert!(
            !input.starts_with('/') && !input.ends_with('/'),
            "{input:?}"
        );
        assert!(!input.contains("//"), "{input:?}");
        assert!(
            !input
                .chars()
                .any(|c| c.is_control() || c == '\\' || c == ' ')
        );
        assert!(!p.group().as_str().contains('/'));
        for seg in p.name().split('/') {
            assert!(
                seg != "." && seg != ".." && !seg.starts_with('.'),
                "{input:?}"
            );
            assert!(seg.len() <= MAX_SEGMENT_LEN);
        }
        assert!(p.name().len() <= MAX_SECRET_NAME_LEN);
    }

    #[test]
    fn lengths_at_their_limits() {
        let at = "a".repeat(MAX_SIMPLE_LEN);
        let over = "a".repeat(MAX_SIMPLE_LEN + 1);
        assert!(at.parse::<AgentName>().is_ok());
        assert!(at.parse::<GroupName>().is_ok());
        assert!(at.parse::<OwnerName>().is_ok());
        assert!(over.parse::<AgentName>().is_err());
        assert!(over.parse::<GroupName>().is_err());
        assert!(over.parse::<OwnerName>().is_err());

        let seg = "s".repeat(MAX_SEGMENT_LEN);
        assert!(format!("g/{seg}").parse::<SecretPath>().is_ok());
        assert!(format!("g/{seg}s").parse::<SecretPath>().is_err());
        // Many segments, each within its limit: the whole name is capped too.
        let five = [seg.as_str(); 5].join("/");
        assert_eq!(five.len(), 1004);
        assert!(format!("g/{five}").parse::<SecretPath>().is_ok());
        let long = format!(
            "{five}/{}",
            "a".repeat(MAX_SECRET_NAME_LEN - five.len() - 1)
        );
        assert_eq!(long.len(), MAX_SECRET_NAME_LEN);
        assert!(format!("g/{long}").parse::<SecretPath>().is_ok());
        assert!(format!("g/{long}a").parse::<SecretPath>().is_err());
        // The group of a secret path follows the group rule.
        assert!(format!("{at}/x").parse::<SecretPath>().is_ok());
        assert!(format!("{over}/x").parse::<SecretPath>().is_err());
    }

    #[test]
    fn traversal_separators_and_unicode_are_refused() {
        for bad in [
            "..",
            "../a",
            "a/..",
            "./a",
            "a/./b",
            "g/../../etc/passwd",
            "g/a/../b",
            "/g/a",
            "g\\a",
            "g/a\\..\\b",
            "g/a\0b",
            "g/a\nb",
            "g/a\tb",
            "g/a\u{7f}",
            "g/é",
            "g/a\u{202e}b",
            "g/\u{ff0e}\u{ff0e}",
            "g/a\u{2215}b",
            "ｇ/a",
            "g/ a",
            "g/a ",
            " g/a",
            "g/a/",
            "g/.",
            "g/..",
            "g/.env",
            "g/_a",
            "g/-a",
            "",
        ] {
            assert!(bad.parse::<SecretPath>().is_err(), "{bad:?} was accepted");
        }
        for bad in [
            "é",
            "a\u{0301}",
            "ａ",
            "a\u{200b}",
            "a\0",
            "a\n",
            "A",
            "a.b",
            "a/b",
            "a:b",
        ] {
            assert!(bad.parse::<AgentName>().is_err(), "{bad:?} was accepted");
            assert!(bad.parse::<GroupName>().is_err(), "{bad:?} was accepted");
            assert!(bad.parse::<OwnerName>().is_err(), "{bad:?} was accepted");
        }
        // `..` inside a segment is not traversal; it is allowed and stays one segment.
        let p: SecretPath = "g/a..b/c...d".parse().unwrap();
        assert_eq!(p.name(), "a..b/c...d");
    }

    #[test]
    fn new_matches_parse() {
        let g: GroupName = "g".parse().unwrap();
        for name in ["a", "a/b", "A.b_c-d", "a..b"] {
            let built = SecretPath::new(g.clone(), name).unwrap();
            assert_eq!(built, format!("g/{name}").parse().unwrap());
        }
        for name in ["", "/a", "a/", "..", "a//b", "é"] {
            assert!(SecretPath::new(g.clone(), name).is_err(), "{name:?}");
        }
        assert!(is_valid_secret_segment("API_KEY"));
        assert!(!is_valid_secret_segment("a/b"));
        assert!(!is_valid_secret_segment(".env"));
        assert!(!is_valid_secret_segment(""));
    }

    #[test]
    fn errors_name_the_kind_and_the_rule() {
        let e = "Bad".parse::<AgentName>().unwrap_err().to_string();
        assert!(e.starts_with("invalid agent name \"Bad\""), "{e}");
        let e = "g/../x".parse::<SecretPath>().unwrap_err().to_string();
        assert!(e.starts_with("invalid secret name \"g/../x\""), "{e}");
        assert!(e.contains("GROUP/NAME"), "{e}");
        // A control character in the input is shown escaped, never raw.
        let e = "a\u{1b}[2J".parse::<GroupName>().unwrap_err().to_string();
        assert!(!e.contains('\u{1b}'), "{e:?}");
    }

    /// A valid segment of a secret name.
    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9][A-Za-z0-9._-]{0,20}"
    }

    /// Inputs near the rules: valid pieces glued with separators, dots,
    /// blanks, controls and non-ASCII letters.
    fn near_miss() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            segment(),
            Just("/".to_owned()),
            Just("//".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("\\".to_owned()),
            Just(" ".to_owned()),
            Just("\0".to_owned()),
            Just("\n".to_owned()),
            Just("é".to_owned()),
            Just("\u{202e}".to_owned()),
            any::<char>().prop_map(|c| c.to_string()),
        ];
        prop::collection::vec(piece, 0..10).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// parse ∘ display = id, for every valid name.
        #[test]
        fn valid_paths_round_trip(
            group in "[a-z0-9][a-z0-9_-]{0,20}",
            segs in prop::collection::vec(segment(), 1..6),
        ) {
            let input = format!("{group}/{}", segs.join("/"));
            let p: SecretPath = input.parse().unwrap();
            prop_assert_eq!(p.to_string(), input.clone());
            prop_assert_eq!(p.group().as_str(), group.as_str());
            prop_assert_eq!(p.name(), segs.join("/"));
            let again: SecretPath = p.to_string().parse().unwrap();
            prop_assert_eq!(again, p);
            let json = serde_json::to_string(&input).unwrap();
            let de: SecretPath = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(de.to_string(), input);
        }

        #[test]
        fn valid_simple_names_round_trip(name in "[a-z0-9][a-z0-9_-]{0,62}") {
            let a: AgentName = name.parse().unwrap();
            prop_assert_eq!(a.to_string(), name.clone());
            let g: GroupName = name.parse().unwrap();
            prop_assert_eq!(g.as_str(), name.as_str());
            let o: OwnerName = name.parse().unwrap();
            prop_assert_eq!(o.to_string(), name);
        }

        /// Whatever parses is safe to join onto a directory.
        #[test]
        fn whatever_parses_is_safe(input in near_miss()) {
            if let Ok(p) = input.parse::<SecretPath>() {
                assert_safe(&input, &p);
            }
            if let Ok(a) = input.parse::<AgentName>() {
                prop_assert_eq!(a.to_string(), input.clone());
                prop_assert!(input.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit() || b == b'_' || b == b'-'));
                prop_assert!(!input.starts_with('-') && !input.starts_with('_'));
            }
        }

        /// Arbitrary text never panics a parser; what parses prints back.
        #[test]
        fn arbitrary_text(input in any::<String>()) {
            if let Ok(p) = input.parse::<SecretPath>() {
                assert_safe(&input, &p);
            }
            if let Ok(g) = input.parse::<GroupName>() {
                prop_assert_eq!(g.to_string(), input);
            }
        }
    }
}
