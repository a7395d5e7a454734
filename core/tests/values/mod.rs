//! Values survive their round trips byte for byte: age encryption through
//! core's crypto, and a dotenv file through `import`'s parser.

use std::path::Path;

use agent_vault_core::crypto::{self, Identity};
use agent_vault_core::dotenv;
use agent_vault_core::secrecy::ExposeSecret;
use proptest::prelude::*;

/// A few identities, made once (generating one per case would dominate).
fn identities() -> &'static [Identity; 3] {
    static IDS: std::sync::OnceLock<[Identity; 3]> = std::sync::OnceLock::new();
    IDS.get_or_init(|| {
        [
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        ]
    })
}

/// A value as a double-quoted dotenv value, every special byte escaped.
fn double_quoted(value: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in value {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

#[test]
fn empty_and_large_values_round_trip() {
    let [a, _, _] = identities();
    for value in [Vec::new(), vec![0u8; 1], vec![0xff; 64 * 1024 + 3]] {
        let ct = crypto::encrypt(&[&a.recipient()], &value).unwrap();
        let back = crypto::decrypt(&[a], &ct, Path::new("x.age")).unwrap();
        assert_eq!(back.expose_secret(), &value);
    }
}

#[test]
fn a_multi_line_quoted_value_keeps_its_lines() {
    let input = b"PEM=\"-----BEGIN-----\nAAAA\n-----END-----\"\nNEXT='a\nb'\n";
    let entries = dotenv::parse(input).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0].value.as_slice(),
        b"-----BEGIN-----\nAAAA\n-----END-----"
    );
    assert_eq!(entries[1].value.as_slice(), b"a\nb");
}

/// A quoted value spanning lines keeps the blanks at the end of its first
/// line. The parser used to trim the whole first line before it read the
/// quote, so `"a \nb"` came back as `"a\nb"`.
#[test]
fn a_multi_line_quoted_value_keeps_trailing_blanks() {
    for input in [&b"K=\"a \nb\"\n"[..], b"K='a \nb'\n"] {
        let entries = dotenv::parse(input).unwrap();
        assert_eq!(entries[0].value.as_slice(), b"a \nb");
    }
}

/// An empty unquoted value followed by a comment is empty. The
/// blanks before the `#` used to be trimmed before the comment was looked for, so
/// `K= # fill in` imported the secret `# fill in`.
#[test]
fn an_empty_value_before_a_comment_is_empty() {
    let entries = dotenv::parse(b"K= # fill in\n").unwrap();
    assert_eq!(entries[0].value.as_slice(), b"");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// encrypt → decrypt is the identity for any bytes, for each recipient;
    /// a key it was not encrypted to opens nothing.
    #[test]
    fn encrypt_decrypt_round_trip(
        value in prop::collection::vec(any::<u8>(), 0..2048),
        to in 1usize..3,
    ) {
        let ids = identities();
        let recipients: Vec<_> = ids[..to].iter().map(Identity::recipient).collect();
        let refs: Vec<_> = recipients.iter().collect();
        let ct = crypto::encrypt(&refs, &value).unwrap();
        prop_assert!(
            value.len() < 16 || !ct.windows(value.len()).any(|w| w == value.as_slice()),
            "the plaintext shows in the ciphertext"
        );
        for id in &ids[..to] {
            let back = crypto::decrypt(&[id], &ct, Path::new("x.age")).unwrap();
            prop_assert_eq!(back.expose_secret(), &value);
        }
        let err = crypto::decrypt(&[&ids[2]], &ct, Path::new("x.age"));
        prop_assert!(err.is_err());
        // A changed byte of the ciphertext (header or payload) is refused.
        let i = value.len() % ct.len();
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        prop_assert!(crypto::decrypt(&[&ids[0]], &bad, Path::new("x.age")).is_err());
    }

    /// Any value written as an escaped double-quoted dotenv value parses
    /// back to the same bytes, under any valid key, with or without
    /// `export `, blanks, comments and CRLF line ends around it.
    #[test]
    fn dotenv_double_quoted_round_trip(
        entries in prop::collection::btree_map(
            "[A-Za-z0-9][A-Za-z0-9._-]{0,12}",
            prop::collection::vec(any::<u8>(), 0..64),
            1..6,
        ),
        export in any::<bool>(),
        crlf in any::<bool>(),
    ) {
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut file = b"# a comment".to_vec();
        file.extend_from_slice(eol);
        for (k, v) in &entries {
            if export {
                file.extend_from_slice(b"export ");
            }
            file.extend_from_slice(k.as_bytes());
            file.extend_from_slice(b" = ");
            file.extend_from_slice(&double_quoted(v));
            file.extend_from_slice(eol);
            file.extend_from_slice(eol);
        }
        let parsed = dotenv::parse(&file).unwrap();
        prop_assert_eq!(parsed.len(), entries.len());
        for (e, (k, v)) in parsed.iter().zip(&entries) {
            prop_assert_eq!(&e.key, k);
            prop_assert_eq!(e.value.as_slice(), v.as_slice());
            // An entry's Debug shows the key, never the value.
            let shown = format!("{e:?}");
            prop_assert!(shown.contains("<redacted>"), "{}", shown);
        }
    }

    /// Unquoted values: trimmed, cut at an inline ` #` comment, else as is.
    #[test]
    fn dotenv_unquoted_values(value in "[A-Za-z0-9_./:+=-]{1,40}") {
        let parsed = dotenv::parse(format!("K={value}  # note\n").as_bytes()).unwrap();
        prop_assert_eq!(parsed[0].value.as_slice(), value.as_bytes());
        let parsed = dotenv::parse(format!("K= {value}").as_bytes()).unwrap();
        prop_assert_eq!(parsed[0].value.as_slice(), value.as_bytes());
    }
}
