//! A quick and sound answer, for a whole buffer, to "can any family find
//! any pattern here?", so most of a response's headers pass without the
//! engine's buffers being built for them.
//!
//! Why it is sound: a family's scanner reads raw text one byte for one
//! byte, each byte through a fixed map ([`plain`]), until it meets one of
//! the bytes that start an escape or a line break ([`specials`]). So in a
//! buffer without those, the family's scanned stream is `plain` of each
//! raw byte, and a pattern is found in it exactly where it is found here.
//! A buffer with one of them is left to the engine.

use memchr::{memchr, memchr3};
use zeroize::Zeroize;

use super::escapes;
use super::family::{Edge, Family};
use super::{FamilyPatterns, Set, Span};

/// A set of a scrubber's families, bit `i` for `Set::families[i]` (there
/// are at most [`Family::ALL`]'s six).
#[derive(Clone, Copy, Default)]
pub(super) struct Families(u8);

impl Families {
    /// Those of `set` that may find something in `raw` scanned whole:
    /// none only when none can, without the engine.
    pub(super) fn of(set: &Set, raw: &[u8]) -> Self {
        let mut may = Families::default();
        if !set.prefilter.may_any(raw) {
            return may;
        }
        for (i, f) in set.families.iter().enumerate() {
            if may_match(f, raw) {
                may.0 |= 1 << i;
            }
        }
        may
    }

    pub(super) fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(super) fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// The longest buffer [`Prefilter::may_any`] looks at: past it, each
/// family's memchr-based test is faster than a byte-at-a-time pass.
const PREFILTER_MAX: usize = 512;

/// One pass over a short buffer (a header's value or name) for every
/// family at once, before each family's own test: a pattern can only
/// occur where raw bytes that read as both of its rare bytes are, and a
/// buffer without any family's special bytes is read one byte for one.
pub(super) struct Prefilter {
    /// For each raw byte, bit `k` when it reads as the first rare byte of
    /// pattern `k` (over every family, in order).
    first: [u64; 256],
    /// The same for the second rare byte.
    second: [u64; 256],
    /// The bytes special to some family ([`has_special`]).
    special: [bool; 256],
    /// Whether there are at most 64 patterns (else it is not used).
    usable: bool,
}

impl Prefilter {
    pub(super) fn new(families: &[FamilyPatterns]) -> Self {
        let mut p = Prefilter {
            first: [0; 256],
            second: [0; 256],
            special: [false; 256],
            usable: true,
        };
        let mut k = 0;
        for f in families {
            for &b in special_bytes(f.family) {
                p.special[usize::from(b)] = true;
            }
            for ((pattern, _), &(r1, r2)) in f.patterns.iter().zip(&f.rare) {
                if k == 64 {
                    p.usable = false;
                    return p;
                }
                for (table, r) in [(&mut p.first, r1), (&mut p.second, r2)] {
                    let (a, b) = sources(f.family, pattern.bytes[r]);
                    table[usize::from(a)] |= 1 << k;
                    table[usize::from(b)] |= 1 << k;
                }
                k += 1;
            }
        }
        p
    }

    /// `false` when no family can find a pattern in `raw` scanned whole;
    /// `true` when some may (each family's own test then decides).
    pub(super) fn may_any(&self, raw: &[u8]) -> bool {
        if !self.usable || raw.len() > PREFILTER_MAX {
            return true;
        }
        let (mut first, mut second, mut special) = (0u64, 0u64, false);
        for &b in raw {
            first |= self.first[usize::from(b)];
            second |= self.second[usize::from(b)];
            special |= self.special[usize::from(b)];
        }
        special || first & second != 0
    }
}

/// The tables say which bytes each value's patterns hold: wiped, as the
/// patterns are.
impl Drop for Prefilter {
    fn drop(&mut self) {
        self.first.zeroize();
        self.second.zeroize();
    }
}

/// Whether `raw` holds a byte after which `f`'s scanner may read other
/// than one byte for one byte.
fn has_special(f: Family, raw: &[u8]) -> bool {
    match *special_bytes(f) {
        [] => false,
        [a] => memchr(a, raw).is_some(),
        [a, b, c, d] => memchr3(a, b, c, raw).is_some() || memchr(d, raw).is_some(),
        ref any => raw.iter().any(|b| any.contains(b)),
    }
}

/// The bytes [`has_special`] looks for.
fn special_bytes(f: Family) -> &'static [u8] {
    match f {
        Family::Literal | Family::Hex => b"",
        Family::Percent => b"%",
        Family::Json => b"\\",
        Family::Html => b"&",
        Family::Base64 => b"\r\n\\%",
    }
}

/// What raw byte `b` reads as in `f`'s scanned stream, away from
/// [`has_special`]'s bytes.
fn plain(f: Family, b: u8) -> u8 {
    match f {
        Family::Literal | Family::Json | Family::Html => b,
        Family::Percent => escapes::percent_canon(b),
        Family::Hex => b.to_ascii_lowercase(),
        Family::Base64 => match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        },
    }
}

/// The raw bytes that [`plain`] reads as `c` (one, or two).
fn sources(f: Family, c: u8) -> (u8, u8) {
    match (f, c) {
        (Family::Percent, b'+') => (b'+', b' '),
        (Family::Hex, c) if c.is_ascii_lowercase() => (c, c.to_ascii_uppercase()),
        (Family::Base64, b'+') => (b'+', b'-'),
        (Family::Base64, b'/') => (b'/', b'_'),
        (_, c) => (c, c),
    }
}

/// Whether `f` may find one of its patterns in `raw` scanned whole:
/// `false` only when it surely finds none.
pub(super) fn may_match(f: &FamilyPatterns, raw: &[u8]) -> bool {
    if raw.len() < f.shortest {
        return false;
    }
    if has_special(f.family, raw) {
        return f.family != Family::Base64 || !only_line_breaks(raw) || rare_bytes_occur(f, raw);
    }
    f.patterns
        .iter()
        .zip(&f.rare)
        .any(|((p, _), &(r1, _))| occurs(f.family, raw, &p.bytes, r1))
}

/// Whether the base64 scanner's only special bytes in `raw` are line
/// breaks (no `\` or `%` escape; `-` and `_` are not in [`has_special`]).
/// Most bodies end lines, and are then read as they are but for the
/// breaks, which the scanner drops (or, for a blank line, reads as a line
/// break, which no pattern holds).
fn only_line_breaks(raw: &[u8]) -> bool {
    memchr::memchr2(b'\\', b'%', raw).is_none()
}

/// Whether, for some pattern, a raw byte that reads as its first rare byte
/// and one that reads as its second are both in `raw`. Sound where each
/// scanned byte but a line break is [`plain`] of one raw byte, as it is
/// for base64 with [`only_line_breaks`]: a match needs both.
fn rare_bytes_occur(f: &FamilyPatterns, raw: &[u8]) -> bool {
    let has = |c: u8| {
        let (a, b) = sources(f.family, c);
        memchr::memchr2(a, b, raw).is_some()
    };
    f.patterns
        .iter()
        .zip(&f.rare)
        .any(|((p, _), &(r1, r2))| has(p.bytes[r1]) && has(p.bytes[r2]))
}

/// Whether `p` occurs in `plain` of `raw`.
fn occurs(f: Family, raw: &[u8], p: &[u8], r1: usize) -> bool {
    occurrences(f, raw, p, r1).next().is_some()
}

/// Every place `p` occurs in `plain` of `raw` (overlapping ones too):
/// candidates where its byte at `r1` may be (found with memchr), checked
/// whole.
fn occurrences<'a>(
    f: Family,
    raw: &'a [u8],
    p: &'a [u8],
    r1: usize,
) -> impl Iterator<Item = usize> + 'a {
    let region = match raw.len().checked_sub(p.len()) {
        Some(last) => &raw[r1..=last + r1],
        None => &[][..],
    };
    let (a, b) = sources(f, p[r1]);
    memchr::memchr2_iter(a, b, region).filter(move |&s| {
        raw[s..s + p.len()]
            .iter()
            .zip(p)
            .all(|(&r, &q)| plain(f, r) == q)
    })
}

/// When `f`'s scanner reads all of `raw` one byte for one byte (no byte of
/// [`has_special`] in it), adds the span of every match its search finds
/// in `raw` read whole (`at_end`), raw offsets from 0, and returns `true`;
/// else `false`, and adds nothing. As `search` does on the scanned stream,
/// which is here `plain` of each byte at the byte's own offset.
pub(super) fn linear_spans(f: &FamilyPatterns, raw: &[u8], spans: &mut Vec<Span>) -> bool {
    if has_special(f.family, raw) {
        return false;
    }
    let fits = |edge: Option<Edge>, i: usize| edge.is_some_and(|e| e.fits(plain(f.family, raw[i])));
    for ((pattern, label), &(r1, _)) in f.patterns.iter().zip(&f.rare) {
        for m in occurrences(f.family, raw, &pattern.bytes, r1) {
            let (mut s, mut e) = (m, m + pattern.bytes.len());
            if s > 0 && fits(pattern.left, s - 1) {
                s -= 1;
            }
            if e < raw.len() && fits(pattern.right, e) {
                e += 1;
            }
            spans.push(Span {
                start: s as u64,
                end: e as u64,
                label: *label,
            });
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::decoded::Decoded;
    use super::*;

    /// Where `has_special` sees nothing, `f`'s scanner reads `raw` as
    /// `plain` of each byte, one for one.
    fn check(f: Family, raw: &[u8]) {
        if has_special(f, raw) {
            return;
        }
        let mut d = Decoded::default();
        assert_eq!(f.scan(raw, 0, true, &mut d), raw.len());
        let want: Vec<u8> = raw.iter().map(|&b| plain(f, b)).collect();
        assert_eq!(&d.bytes[..], &want[..], "{f:?} {raw:?}");
        for i in 0..raw.len() {
            assert_eq!((d.raw_start(i), d.raw_end(i)), (i as u64, i as u64 + 1));
        }
    }

    /// The one-pass test: text without any pattern's rare bytes (nor a
    /// special byte) is let by; with a pattern in any family's form, or a
    /// special byte, or over 64 patterns, each family's test decides.
    #[test]
    fn the_prefilter_lets_by_only_what_no_family_can_find() {
        let new = |values: &[&[u8]]| {
            super::super::Scrubber::new(
                values.iter().map(|v| (*v, "g/n")),
                super::super::Redaction::Marker,
            )
        };
        let s = new(&[b"tok_123"]);
        let pf = &s.set.prefilter;
        let rare: Vec<u8> = s
            .set
            .families
            .iter()
            .flat_map(|f| {
                f.patterns
                    .iter()
                    .zip(&f.rare)
                    .flat_map(move |((p, _), &(r1, r2))| {
                        let (a, b) = sources(f.family, p.bytes[r1]);
                        let (c, d) = sources(f.family, p.bytes[r2]);
                        [a, b, c, d]
                    })
            })
            .collect();
        let text: Vec<u8> = (b' '..=b'~')
            .filter(|b| !rare.contains(b) && !pf.special[usize::from(*b)])
            .collect();
        assert!(!text.is_empty());
        assert!(!pf.may_any(&text));
        assert!(s.scrubbed(&text).is_none());
        for f in &s.set.families {
            for (p, _) in &f.patterns {
                assert!(
                    pf.may_any(&[&text[..], &p.bytes[..]].concat()),
                    "{:?}",
                    f.family
                );
            }
        }
        assert!(pf.may_any(&[&text[..], b"%"].concat()));
        assert!(pf.may_any(&[&text[..], b"&"].concat()));
        // Past its length, or with too many patterns, it always says maybe.
        assert!(pf.may_any(&text.repeat(PREFILTER_MAX / text.len() + 1)));
        let many: Vec<Vec<u8>> = (0..12)
            .map(|i| format!("value-{i}-x").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        let s = new(&refs);
        assert!(!s.set.prefilter.usable);
        assert!(s.set.prefilter.may_any(b""));
    }

    /// No scanner reads more bytes than it is given (what the shortest
    /// pattern's length check in [`may_match`] rests on): every escape
    /// decodes to at most as many bytes as it is written with.
    #[test]
    fn no_scanner_reads_more_than_it_is_given() {
        let units: [&[u8]; 20] = [
            b"&#0",
            b"&#0;",
            b"&#x0",
            b"&#1114111;",
            b"&#99999999",
            b"&ne;",
            b"&not",
            b"&lt",
            b"&Mu;",
            b"\\ud83d",
            b"\\uD83D\\ude00",
            b"\\u00e9",
            b"\\u00",
            b"\\n",
            b"%2b",
            b"%4",
            b"\r\n\r\n",
            b"\n\n",
            b"&",
            b"\\",
        ];
        for f in Family::ALL {
            for a in units {
                for b in units {
                    let raw = [a, b, a].concat();
                    let mut d = Decoded::default();
                    f.scan(&raw, 0, true, &mut d);
                    assert!(d.bytes.len() <= raw.len(), "{f:?} {raw:?}");
                }
            }
        }
    }

    /// Base64 with line breaks (and no other escape) goes to the engine
    /// only when a raw byte reading as each of some pattern's two rare
    /// bytes is there: lines of text without them pass without it.
    #[test]
    fn lines_without_the_rare_bytes_need_no_base64_scan() {
        let s = super::super::Scrubber::new(
            [(&b"tok_123"[..], "g/n")],
            super::super::Redaction::Marker,
        );
        let f = s.set.families.iter().find(|f| f.family == Family::Base64);
        let f = f.expect("a base64 family");
        let rare: Vec<u8> = f
            .patterns
            .iter()
            .zip(&f.rare)
            .flat_map(|((p, _), &(r1, r2))| [p.bytes[r1], p.bytes[r2]])
            .collect();
        // Text of every byte but the rare ones (and their sources), in lines.
        let text: Vec<u8> = (b' '..=b'~')
            .filter(|&b| b != b'\\' && b != b'%')
            .filter(|&b| {
                rare.iter().all(|&c| {
                    b != sources(Family::Base64, c).0 && b != sources(Family::Base64, c).1
                })
            })
            .collect();
        let lines = [&text[..], b"\n", &text[..], b"\r\n\r\n"].concat();
        assert!(!may_match(f, &lines));
        assert_eq!(s.replace_all(&lines), lines);
        // With an escape the engine reads it whole.
        assert!(may_match(f, &[&lines[..], b"%2b"].concat()));
        assert!(may_match(f, &[&lines[..], b"\\n"].concat()));
        // Each pattern's two rare bytes, anywhere in the lines: to the engine.
        for ((p, _), &(r1, r2)) in f.patterns.iter().zip(&f.rare) {
            let both = [&lines[..], &[p.bytes[r2]], b"\n", &[p.bytes[r1]]].concat();
            assert!(may_match(f, &both));
        }
    }

    #[test]
    fn plain_is_what_each_scanner_reads() {
        let all: Vec<u8> = (0..=255u8).collect();
        let some = b"%\\&\r\n-_ +/aAfF0u#x;2Blt";
        let escapes: [&[u8]; 8] = [
            b"%41",
            b"%2b",
            b"\\u0041",
            b"\\/",
            b"\\n",
            b"&#65;",
            b"&amp;",
            b"a\r\n\r\nb",
        ];
        for f in Family::ALL {
            check(f, &all);
            for e in escapes {
                check(f, e);
            }
            for &a in some {
                for &b in some {
                    for &c in some {
                        check(f, &[a, b, c]);
                    }
                }
            }
            // `special_bytes` are the bytes `has_special` finds.
            for b in 0..=255u8 {
                assert_eq!(
                    has_special(f, &[b]),
                    special_bytes(f).contains(&b),
                    "{f:?} {b}"
                );
            }
            // `sources` names every byte `plain` reads as each byte.
            for c in 0..=255u8 {
                let (a, b) = sources(f, c);
                for r in 0..=255u8 {
                    assert!(plain(f, r) != c || r == a || r == b, "{f:?} {c} {r}");
                }
            }
        }
    }
}
