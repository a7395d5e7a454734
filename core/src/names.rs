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
