//! The transformation families: for each, the patterns a value becomes and
//! a scanner that maps raw text onto the stream those patterns are looked
//! for in. A family never enumerates the variants of an encoding (which
//! characters are escaped, upper or lower case): its scanner normalises
//! them as it goes, and the patterns are in the same normal form.
//!
//! | family  | scanned stream                         | patterns              |
//! |---------|----------------------------------------|-----------------------|
//! | literal | the raw bytes                          | the value             |
//! | percent | `%HH` decoded, space written `+`       | the value, same spaces|
//! | json    | `\uXXXX` (pairs too) and `\n`… decoded | the value             |
//! | html    | `&#NN;` `&#xHH;` `&amp;`… decoded      | the value             |
//! | hex     | ASCII lower-cased                      | lower-case hex        |
//! | base64  | `-_` as `+/`, line breaks dropped      | 3 alignments' runs    |

use base64::Engine;
use zeroize::Zeroizing;

use super::decoded::Decoded;
use super::escapes;

/// One way a value can be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// The value as it is.
    Literal,
    /// Percent-encoding, any subset of bytes escaped, hex in either case;
    /// `+` and `%20` both count as a space.
    Percent,
    /// JSON string escapes: `\uXXXX` (surrogate pairs too, either case)
    /// and the short ones (`\"`, `\/`, `\n`…).
    Json,
    /// HTML character references: decimal, hexadecimal and the named ones
    /// for ASCII characters.
    Html,
    /// Hexadecimal, upper or lower case (or mixed), at any byte offset.
    Hex,
    /// Base64 of any text containing the value, standard or URL-safe
    /// alphabet, with or without padding, with line breaks (raw or as JSON
    /// `\n`) anywhere, `/` written `\/`, `+/` percent-encoded.
    Base64,
}

impl Family {
    /// Every family, in the order the engine scans them.
    pub const ALL: [Family; 6] = [
        Family::Literal,
        Family::Percent,
        Family::Json,
        Family::Html,
        Family::Hex,
        Family::Base64,
    ];

    /// What `value` becomes in this family's scanned stream.
    pub(super) fn patterns(self, value: &[u8]) -> Vec<Pattern> {
        let whole = |bytes: Vec<u8>| Pattern {
            bytes: Zeroizing::new(bytes),
            left: None,
            right: None,
        };
        let mut out = match self {
            Family::Literal | Family::Json | Family::Html => vec![whole(value.to_vec())],
            Family::Percent => vec![whole(
                value.iter().map(|&b| escapes::percent_canon(b)).collect(),
            )],
            Family::Hex => vec![whole(hex::encode(value).into_bytes())],
            Family::Base64 => base64_runs(value),
        };
        out.retain(|p| !p.bytes.is_empty());
        out
    }

    /// Scans `raw` (whose first byte is at absolute offset `pos`) into
    /// `out` as far as whole units go; returns how many bytes it consumed.
    /// With `at_end`, nothing more is coming: a unit left incomplete is
    /// taken as plain text.
    pub(super) fn scan(self, raw: &[u8], pos: u64, at_end: bool, out: &mut Decoded) -> usize {
        match self {
            Family::Literal => {
                out.push_linear(pos, raw);
                raw.len()
            }
            Family::Percent => escapes::percent(raw, pos, at_end, out),
            Family::Json => escapes::json(raw, pos, at_end, out),
            Family::Html => escapes::html(raw, pos, at_end, out),
            Family::Hex => {
                out.push_linear_with(pos, raw, u8::to_ascii_lowercase);
                raw.len()
            }
            Family::Base64 => base64_scan(raw, pos, at_end, out),
        }
    }
}

/// What a value becomes in a family's scanned stream.
pub(super) struct Pattern {
    /// The pattern (zeroized on drop).
    pub(super) bytes: Zeroizing<Vec<u8>>,
    /// Whether a match takes one more character before it, when it has
    /// one that fits: a base64 character that holds bits of the value and
    /// of what comes before it both.
    pub(super) left: Option<Edge>,
    /// The same after it.
    pub(super) right: Option<Edge>,
}

/// The bits of the value that a base64 character at a pattern's edge
/// holds: a character there whose bits differ holds none of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Edge {
    /// Which of the character's six bits are the value's.
    mask: u8,
    /// What they are.
    bits: u8,
}

impl Edge {
    /// Any base64 character: for text whose case was folded, where a
    /// character's bits are no longer known.
    pub(super) const ANY: Edge = Edge { mask: 0, bits: 0 };

    /// Whether `c` (a normalised scanned byte) is a base64 character
    /// holding these bits.
    pub(super) fn fits(self, c: u8) -> bool {
        sextet(c).is_some_and(|v| v & self.mask == self.bits)
    }
}

/// The six bits a character of the standard base64 alphabet stands for.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// The base64 characters that depend on the value's bytes alone, for each
/// of the three offsets (modulo 3) the value can have in the encoded text.
///
/// With the value at byte offset `a`, its bits are `8a..8a+8n`; character
/// `i` holds bits `6i..6i+6`, so it is the value's alone when
/// `8a <= 6i` and `6i + 6 <= 8a + 8n`.
fn base64_runs(value: &[u8]) -> Vec<Pattern> {
    let n = value.len();
    (0..3usize)
        .filter_map(|a| {
            let mut text = Zeroizing::new(vec![0u8; a]);
            text.extend_from_slice(value);
            let encoded = Zeroizing::new(
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(&*text)
                    .into_bytes(),
            );
            let first = (8 * a).div_ceil(6);
            let end = (8 * a + 8 * n) / 6;
            // The character before `first` holds the low bits of its six
            // (the first byte's top ones); the one at `end`, the high bits
            // (the last byte's low ones).
            let lead = (6 - (8 * a) % 6) % 6;
            let trail = (8 * a + 8 * n) % 6;
            let left = (lead > 0).then(|| Edge {
                mask: (1 << lead) - 1,
                bits: value[0] >> (8 - lead),
            });
            let right = (trail > 0).then(|| Edge {
                mask: ((1 << trail) - 1) << (6 - trail),
                bits: (value[n - 1] & ((1 << trail) - 1)) << (6 - trail),
            });
            (first < end).then(|| Pattern {
                bytes: Zeroizing::new(encoded[first..end].to_vec()),
                left,
                right,
            })
        })
        .collect()
}

/// Bytes the base64 scanner treats specially (a table: it is asked of
/// every byte).
static BASE64_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut k = 0;
    let specials = *b"-_\r\n\\%";
    while k < specials.len() {
        t[specials[k] as usize] = true;
        k += 1;
    }
    t
};

/// The base64 family's scanner: `-`/`_` read as `+`/`/`; CR, LF and the
/// JSON escapes `\n`, `\r` dropped; `\/` read as `/`; `%2B`, `%2F`, `%3D`
/// read as `+`, `/`, `=`. Everything else passes as it is (and, not being
/// in the alphabet, ends a run).
fn base64_scan(raw: &[u8], pos: u64, at_end: bool, out: &mut Decoded) -> usize {
    let mut i = 0;
    while i < raw.len() {
        let start = i;
        while i < raw.len() && !BASE64_SPECIAL[usize::from(raw[i])] {
            i += 1;
        }
        if i > start {
            out.push_linear(pos + start as u64, &raw[start..i]);
            out.after_line_break = false;
        }
        let Some(&b) = raw.get(i) else { break };
        let at = pos + i as u64;
        // A line break inside a run is dropped; a blank line ends the run
        // (no base64 text has one, and a stream of events ends each with
        // one: it must not be held back).
        let line_break = |out: &mut Decoded, at: u64| {
            if out.after_line_break {
                out.push_byte(at, b'\n');
            }
            out.after_line_break = true;
        };
        match b {
            b'-' => out.push_byte(at, b'+'),
            b'_' => out.push_byte(at, b'/'),
            b'\r' => {
                i += 1;
                continue;
            }
            b'\n' => {
                line_break(out, at);
                i += 1;
                continue;
            }
            b'\\' => match raw.get(i + 1) {
                None if !at_end => return i,
                Some(b'r') => {
                    i += 2;
                    continue;
                }
                Some(b'n') => {
                    line_break(out, at);
                    i += 2;
                    continue;
                }
                Some(b'/') => {
                    out.push_unit(at, at + 2, b"/");
                    out.after_line_break = false;
                    i += 2;
                    continue;
                }
                _ => out.push_byte(at, b),
            },
            _ => {
                // '%'
                let rest = &raw[i + 1..raw.len().min(i + 3)];
                if rest.len() < 2 && !at_end && escapes::could_be(rest, &[b"2B", b"2F", b"3D"]) {
                    return i;
                }
                let decoded = match rest.to_ascii_uppercase().as_slice() {
                    b"2B" => Some(b'+'),
                    b"2F" => Some(b'/'),
                    b"3D" => Some(b'='),
                    _ => None,
                };
                if let Some(d) = decoded {
                    out.push_unit(at, at + 3, &[d]);
                    out.after_line_break = false;
                    i += 3;
                    continue;
                }
                out.push_byte(at, b);
            }
        }
        out.after_line_break = false;
        i += 1;
    }
    raw.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(f: Family, raw: &[u8]) -> Vec<u8> {
        let mut d = Decoded::default();
        assert_eq!(f.scan(raw, 0, true, &mut d), raw.len());
        d.bytes.to_vec()
    }

    #[test]
    fn base64_runs_are_those_of_every_offset() {
        let value = b"s3cr3t-value";
        let runs = base64_runs(value);
        assert_eq!(runs.len(), 3);
        let b64 = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
        for prefix in ["", "x", "xy", "xyz", "wxyz"] {
            for suffix in ["", "1", "12", "123"] {
                let text = [prefix.as_bytes(), value, suffix.as_bytes()].concat();
                let enc = b64(&text);
                assert!(
                    runs.iter()
                        .any(|r| enc.contains(std::str::from_utf8(&r.bytes).unwrap_or("-"))),
                    "{prefix:?} {suffix:?}: {enc}"
                );
            }
        }
    }

    #[test]
    fn base64_scan_normalises_and_drops_breaks() {
        assert_eq!(
            scan(Family::Base64, b"ab-_\r\ncd\\nef\\/gh%2b%2Fi%3dj k"),
            b"ab+/cdef/gh+/i=j k"
        );
        // A blank line, however written, ends a run; across chunks too.
        assert_eq!(
            scan(Family::Base64, b"ab\n\ncd\r\n\r\nef\\n\\ngh"),
            b"ab\ncd\nef\ngh"
        );
        let mut d = Decoded::default();
        Family::Base64.scan(b"ab\r\n", 0, false, &mut d);
        Family::Base64.scan(b"\r\ncd", 4, false, &mut d);
        assert_eq!(&d.bytes[..], b"ab\ncd");
        // Incomplete at the end of a chunk: waits.
        let mut d = Decoded::default();
        assert_eq!(Family::Base64.scan(b"ab%2", 0, false, &mut d), 2);
        assert_eq!(Family::Base64.scan(b"ab\\", 0, false, &mut d), 2);
        assert_eq!(Family::Base64.scan(b"ab%zz", 0, false, &mut d), 5);
    }

    #[test]
    fn hex_lowers_case_and_patterns_are_lower_hex() {
        assert_eq!(scan(Family::Hex, b"4A6b-Z"), b"4a6b-z");
        assert_eq!(&*Family::Hex.patterns(b"Jk")[0].bytes, b"4a6b");
    }
}
