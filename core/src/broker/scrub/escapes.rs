//! Scanners for the escaping families: percent-encoding, JSON string
//! escapes and HTML character references. Each decodes whatever escapes
//! it meets (any subset of the characters may be escaped, hex digits in
//! either case) and passes every other byte through; a unit cut by the end
//! of a chunk is waited for, and one that can never complete is plain text.

use memchr::{memchr, memchr2};

use super::decoded::Decoded;

/// How a byte reads in the percent family: `+` and space are one.
pub(super) fn percent_canon(b: u8) -> u8 {
    if b == b' ' { b'+' } else { b }
}

/// Whether `rest` (what has arrived so far) may still become one of
/// `options` (compared ignoring ASCII case).
pub(super) fn could_be(rest: &[u8], options: &[&[u8]]) -> bool {
    options
        .iter()
        .any(|o| o.len() > rest.len() && o[..rest.len()].eq_ignore_ascii_case(rest))
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The 4-hex-digit number at the start of `s`, if it is one.
fn hex4(s: &[u8]) -> Option<u32> {
    let s = s.get(..4)?;
    s.iter()
        .try_fold(0u32, |acc, &b| Some(acc * 16 + u32::from(hex_val(b)?)))
}

/// `cp` as UTF-8, surrogates included (as WTF-8 writes them): what a
/// decoder that does not reject them would produce.
fn utf8(cp: u32, out: &mut [u8; 4]) -> usize {
    // Each `as u8` keeps the low bits on purpose.
    match cp {
        0..=0x7f => {
            out[0] = cp as u8;
            1
        }
        0x80..=0x7ff => {
            out[0] = 0xc0 | (cp >> 6) as u8;
            out[1] = 0x80 | (cp & 0x3f) as u8;
            2
        }
        0x800..=0xffff => {
            out[0] = 0xe0 | (cp >> 12) as u8;
            out[1] = 0x80 | ((cp >> 6) & 0x3f) as u8;
            out[2] = 0x80 | (cp & 0x3f) as u8;
            3
        }
        _ => {
            out[0] = 0xf0 | ((cp >> 18) & 0x07) as u8;
            out[1] = 0x80 | ((cp >> 12) & 0x3f) as u8;
            out[2] = 0x80 | ((cp >> 6) & 0x3f) as u8;
            out[3] = 0x80 | (cp & 0x3f) as u8;
            4
        }
    }
}

fn push_cp(out: &mut Decoded, raw: u64, raw_end: u64, cp: u32) {
    let mut buf = [0u8; 4];
    let n = utf8(cp, &mut buf);
    out.push_unit(raw, raw_end, &buf[..n]);
}

/// Percent-encoding: `%HH` decoded; a space (from `%20` or as it is) and
/// `+` both read as `+`.
pub(super) fn percent(raw: &[u8], pos: u64, at_end: bool, out: &mut Decoded) -> usize {
    let mut i = 0;
    while i < raw.len() {
        let Some(j) = memchr2(b'%', b' ', &raw[i..]).map(|j| i + j) else {
            out.push_linear(pos + i as u64, &raw[i..]);
            break;
        };
        out.push_linear(pos + i as u64, &raw[i..j]);
        let at = pos + j as u64;
        if raw[j] == b' ' {
            out.push_byte(at, b'+');
            i = j + 1;
            continue;
        }
        let digits = &raw[j + 1..raw.len().min(j + 3)];
        if digits.len() < 2 && !at_end && digits.iter().all(|&b| hex_val(b).is_some()) {
            return j;
        }
        match (
            digits.first().copied().and_then(hex_val),
            digits.get(1).copied().and_then(hex_val),
        ) {
            (Some(h), Some(l)) => {
                out.push_unit(at, at + 3, &[percent_canon(h * 16 + l)]);
                i = j + 3;
            }
            _ => {
                out.push_byte(at, b'%');
                i = j + 1;
            }
        }
    }
    raw.len()
}

/// JSON string escapes: the short ones and `\uXXXX`, a surrogate pair as
/// the character it encodes, a lone surrogate as WTF-8.
pub(super) fn json(raw: &[u8], pos: u64, at_end: bool, out: &mut Decoded) -> usize {
    let mut i = 0;
    while i < raw.len() {
        let Some(j) = memchr(b'\\', &raw[i..]).map(|j| i + j) else {
            out.push_linear(pos + i as u64, &raw[i..]);
            break;
        };
        out.push_linear(pos + i as u64, &raw[i..j]);
        let at = pos + j as u64;
        let short = match raw.get(j + 1) {
            None if !at_end => return j,
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            _ => None,
        };
        if let Some(b) = short {
            out.push_unit(at, at + 2, &[b]);
            i = j + 2;
            continue;
        }
        match json_u(&raw[j..], at_end) {
            Unit::Wait => return j,
            Unit::Plain => {
                out.push_byte(at, b'\\');
                i = j + 1;
            }
            Unit::Char(cp, len) => {
                push_cp(out, at, at + len as u64, cp);
                i = j + len;
            }
        }
    }
    raw.len()
}

/// What a unit at the start of some text is.
enum Unit {
    /// Cut by the end of the chunk: wait for more.
    Wait,
    /// Not a unit: its first byte is plain text.
    Plain,
    /// A character and the unit's length.
    Char(u32, usize),
}

/// A `\uXXXX` unit (or a pair of them) at the start of `s`.
fn json_u(s: &[u8], at_end: bool) -> Unit {
    let cut = |n: usize| {
        !at_end && s.len() < n && s[2.min(s.len())..].iter().all(|&b| hex_val(b).is_some())
    };
    if s.get(1) != Some(&b'u') {
        return Unit::Plain;
    }
    if cut(6) {
        return Unit::Wait;
    }
    let Some(hi) = s.get(2..).and_then(hex4) else {
        return Unit::Plain;
    };
    if !(0xd800..0xdc00).contains(&hi) {
        return Unit::Char(hi, 6);
    }
    let low = &s[6..];
    if !at_end && low.len() < 6 && could_be_json_u(low) {
        return Unit::Wait;
    }
    if low.starts_with(b"\\u")
        && let Some(lo) = low.get(2..).and_then(hex4)
        && (0xdc00..0xe000).contains(&lo)
    {
        return Unit::Char(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00), 12);
    }
    Unit::Char(hi, 6)
}

/// Whether `s` may still become the start of a `\uXXXX` unit.
fn could_be_json_u(s: &[u8]) -> bool {
    s.iter().enumerate().all(|(k, &b)| match k {
        0 => b == b'\\',
        1 => b == b'u',
        _ => hex_val(b).is_some(),
    })
}

/// The longest run of digits in a numeric reference (leading zeros count).
const MAX_DIGITS: usize = 16;
/// The longest name of a named reference.
const MAX_NAME: usize = 32;

/// Named references for the characters that have one and could be in a
/// credential: ASCII and the no-break space (HTML's names, case-sensitive).
pub(super) const NAMED: &[(&str, &str)] = &[
    ("Tab", "\t"),
    ("NewLine", "\n"),
    ("excl", "!"),
    ("quot", "\""),
    ("QUOT", "\""),
    ("num", "#"),
    ("dollar", "$"),
    ("percnt", "%"),
    ("amp", "&"),
    ("AMP", "&"),
    ("apos", "'"),
    ("lpar", "("),
    ("rpar", ")"),
    ("ast", "*"),
    ("midast", "*"),
    ("plus", "+"),
    ("comma", ","),
    ("period", "."),
    ("sol", "/"),
    ("colon", ":"),
    ("semi", ";"),
    ("lt", "<"),
    ("LT", "<"),
    ("equals", "="),
    ("gt", ">"),
    ("GT", ">"),
    ("quest", "?"),
    ("commat", "@"),
    ("lsqb", "["),
    ("lbrack", "["),
    ("bsol", "\\"),
    ("rsqb", "]"),
    ("rbrack", "]"),
    ("Hat", "^"),
    ("lowbar", "_"),
    ("UnderBar", "_"),
    ("grave", "`"),
    ("DiacriticalGrave", "`"),
    ("lcub", "{"),
    ("lbrace", "{"),
    ("verbar", "|"),
    ("vert", "|"),
    ("VerticalLine", "|"),
    ("rcub", "}"),
    ("rbrace", "}"),
    ("nbsp", "\u{a0}"),
    ("NonBreakingSpace", "\u{a0}"),
];

/// Names a browser also reads without the `;` (the ASCII ones, and nbsp).
const LEGACY: &[&str] = &["quot", "QUOT", "amp", "AMP", "lt", "LT", "gt", "GT", "nbsp"];

/// HTML character references: `&#NN;`, `&#xHH;` (the `;` optional, as
/// browsers read them; leading zeros allowed up to 16 digits), and the
/// named ones in [`NAMED`].
pub(super) fn html(raw: &[u8], pos: u64, at_end: bool, out: &mut Decoded) -> usize {
    let mut i = 0;
    while i < raw.len() {
        let Some(j) = memchr(b'&', &raw[i..]).map(|j| i + j) else {
            out.push_linear(pos + i as u64, &raw[i..]);
            break;
        };
        out.push_linear(pos + i as u64, &raw[i..j]);
        let at = pos + j as u64;
        let unit = if raw.get(j + 1) == Some(&b'#') {
            html_numeric(&raw[j..], at_end)
        } else {
            html_named(&raw[j..], at_end)
        };
        match unit {
            Unit::Wait => return j,
            Unit::Plain => {
                out.push_byte(at, b'&');
                i = j + 1;
            }
            Unit::Char(cp, len) => {
                push_cp(out, at, at + len as u64, cp);
                i = j + len;
            }
        }
    }
    raw.len()
}

/// A numeric reference at the start of `s` (which starts `&#`).
fn html_numeric(s: &[u8], at_end: bool) -> Unit {
    let mut k = 2;
    let radix = match s.get(k) {
        None if !at_end => return Unit::Wait,
        Some(b'x' | b'X') => {
            k += 1;
            16
        }
        _ => 10,
    };
    let digits = s[k.min(s.len())..]
        .iter()
        .take(MAX_DIGITS + 1)
        .take_while(|&&b| {
            if radix == 16 {
                b.is_ascii_hexdigit()
            } else {
                b.is_ascii_digit()
            }
        })
        .count();
    if digits > MAX_DIGITS {
        return Unit::Plain;
    }
    let end = k + digits;
    // Digits (or the `;`) may still come.
    if end >= s.len() && !at_end {
        return Unit::Wait;
    }
    if digits == 0 {
        return Unit::Plain;
    }
    let value = s[k..end].iter().fold(0u64, |acc, &b| {
        let d = hex_val(b).map_or(0, u64::from);
        acc.saturating_mul(radix).saturating_add(d)
    });
    let cp = match u32::try_from(value) {
        Ok(cp) if cp != 0 && cp <= 0x10ffff && !(0xd800..0xe000).contains(&cp) => cp,
        _ => 0xfffd,
    };
    let len = if s.get(end) == Some(&b';') {
        end + 1
    } else {
        end
    };
    Unit::Char(cp, len)
}

/// A named reference at the start of `s` (which starts `&`).
fn html_named(s: &[u8], at_end: bool) -> Unit {
    let name_len = s[1..]
        .iter()
        .take(MAX_NAME + 1)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    if name_len > MAX_NAME {
        return Unit::Plain;
    }
    let end = 1 + name_len;
    if end >= s.len() && !at_end {
        return Unit::Wait;
    }
    let name = &s[1..end];
    let char_of = |n: &[u8]| {
        NAMED
            .iter()
            .find(|(k, _)| k.as_bytes() == n)
            .and_then(|(_, v)| v.chars().next())
    };
    if s.get(end) == Some(&b';')
        && let Some(c) = char_of(name)
    {
        return Unit::Char(u32::from(c), end + 1);
    }
    // Without the `;`: the longest legacy name the text starts with.
    LEGACY
        .iter()
        .filter(|l| name.starts_with(l.as_bytes()))
        .max_by_key(|l| l.len())
        .and_then(|l| Some((char_of(l.as_bytes())?, l.len())))
        .map_or(Unit::Plain, |(c, n)| Unit::Char(u32::from(c), 1 + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Scan = fn(&[u8], u64, bool, &mut Decoded) -> usize;

    fn decode(f: Scan, raw: &[u8]) -> Vec<u8> {
        let mut d = Decoded::default();
        assert_eq!(f(raw, 0, true, &mut d), raw.len());
        d.bytes.to_vec()
    }

    /// How much of `raw` is consumed before the end of the stream.
    fn consumed(f: Scan, raw: &[u8]) -> usize {
        f(raw, 0, false, &mut Decoded::default())
    }

    #[test]
    fn percent_any_subset_either_case() {
        assert_eq!(decode(percent, b"a%2fb%2Fc%41 d+e%20f"), b"a/b/cA+d+e+f");
        assert_eq!(decode(percent, b"100% %zz %4"), b"100%+%zz+%4");
        assert_eq!(consumed(percent, b"ab%4"), 2);
        assert_eq!(consumed(percent, b"ab%"), 2);
        assert_eq!(consumed(percent, b"ab%4g"), 5);
    }

    #[test]
    fn json_escapes_and_surrogates() {
        assert_eq!(
            decode(json, br#"a\u0041\u004a\"\/\\\n\t\x"#),
            b"aAJ\"/\\\n\t\\x"
        );
        assert_eq!(decode(json, br"\uD83D\ude00!"), "😀!".as_bytes());
        // A lone surrogate: its WTF-8 bytes.
        assert_eq!(decode(json, br"\ud83dx"), b"\xed\xa0\xbdx");
        assert_eq!(decode(json, br"\u00"), b"\\u00");
        assert_eq!(consumed(json, br"ab\u00"), 2);
        assert_eq!(consumed(json, br"ab\"), 2);
        assert_eq!(consumed(json, br"ab\ud83d\u"), 2);
        assert_eq!(consumed(json, br"ab\ud83dx"), 9);
    }

    #[test]
    fn html_numeric_named_and_legacy() {
        assert_eq!(
            decode(
                html,
                b"&#65;&#x42;&#X43&#0000068;&amp;&lt&quot;&sol;&bogus;&"
            ),
            b"ABCD&<\"/&bogus;&"
        );
        assert_eq!(decode(html, b"&#128512;"), "😀".as_bytes());
        assert_eq!(decode(html, b"&#0;&#xD800;"), "\u{fffd}\u{fffd}".as_bytes());
        assert_eq!(consumed(html, b"ab&#6"), 2);
        assert_eq!(consumed(html, b"ab&#65"), 2);
        assert_eq!(consumed(html, b"ab&am"), 2);
        assert_eq!(consumed(html, b"ab&#65;"), 7);
        // Longer than any reference: plain text.
        let long = format!("&#{}", "0".repeat(40));
        assert_eq!(decode(html, long.as_bytes()), long.as_bytes());
    }
}
