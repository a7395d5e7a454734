//! The tests' own encoders (each transformation, with the choices its
//! encoding allows) and lenient decoders that read an output back every
//! way a family allows: written apart from the engine's scanners.

use base64::Engine;

/// A tiny deterministic generator (for the encoders' choices).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub(super) fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// One way of writing a text, with the choices the encoding allows.
#[derive(Clone, Copy, Debug)]
pub(super) enum Transform {
    Literal,
    /// Which bytes are escaped (seeded), hex case, spaces as `+`.
    Percent {
        seed: u64,
        upper: bool,
        plus: bool,
    },
    /// Which characters are `\u`-escaped (seeded), hex case.
    Json {
        seed: u64,
        upper: bool,
    },
    /// Which characters are references, and of which kind (seeded).
    Html {
        seed: u64,
    },
    /// Upper, lower or (seeded) mixed case.
    Hex {
        seed: u64,
        case: u8,
    },
    /// Alphabet, padding, line length and break.
    Base64 {
        url: bool,
        pad: bool,
        wrap: usize,
        brk: &'static str,
    },
}

pub(super) const BREAKS: [&str; 3] = ["\n", "\r\n", "\\n"];

pub(super) fn transform(seed: u64, kind: u8) -> Transform {
    let mut r = Rng(seed);
    match kind % 6 {
        0 => Transform::Literal,
        1 => Transform::Percent {
            seed,
            upper: r.coin(),
            plus: r.coin(),
        },
        2 => Transform::Json {
            seed,
            upper: r.coin(),
        },
        3 => Transform::Html { seed },
        4 => Transform::Hex {
            seed,
            case: (r.next() % 3) as u8,
        },
        _ => Transform::Base64 {
            url: r.coin(),
            pad: r.coin(),
            wrap: [0, 60, 76, 4, 7][(r.next() % 5) as usize],
            brk: BREAKS[(r.next() % 3) as usize],
        },
    }
}

pub(super) fn hex_digit(d: u8, upper: bool) -> char {
    let c = char::from_digit(u32::from(d), 16).unwrap_or('0');
    if upper { c.to_ascii_uppercase() } else { c }
}

pub(super) fn encode(t: Transform, text: &[u8]) -> Vec<u8> {
    match t {
        Transform::Literal => text.to_vec(),
        Transform::Percent { seed, upper, plus } => {
            let mut r = Rng(seed);
            let mut out = String::new();
            for &b in text {
                let must = !(b.is_ascii_alphanumeric() || b"-._~/:@!$'()*,;".contains(&b));
                if b == b' ' && plus && r.coin() {
                    out.push('+');
                } else if must || r.coin() {
                    out.push('%');
                    out.push(hex_digit(b >> 4, upper));
                    out.push(hex_digit(b & 15, upper));
                } else {
                    out.push(b as char);
                }
            }
            out.into_bytes()
        }
        Transform::Json { seed, upper } => json_encode(text, seed, upper),
        Transform::Html { seed } => html_encode(text, seed),
        Transform::Hex { seed, case } => {
            let mut r = Rng(seed);
            let mut out = String::new();
            for &b in text {
                for d in [b >> 4, b & 15] {
                    let upper = match case {
                        0 => false,
                        1 => true,
                        _ => r.coin(),
                    };
                    out.push(hex_digit(d, upper));
                }
            }
            out.into_bytes()
        }
        Transform::Base64 {
            url,
            pad,
            wrap,
            brk,
        } => {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            let e = match (url, pad) {
                (false, true) => STANDARD.encode(text),
                (false, false) => STANDARD_NO_PAD.encode(text),
                (true, true) => URL_SAFE.encode(text),
                (true, false) => URL_SAFE_NO_PAD.encode(text),
            };
            if wrap == 0 {
                return e.into_bytes();
            }
            let lines: Vec<&[u8]> = e.as_bytes().chunks(wrap).collect();
            lines.join(brk.as_bytes())
        }
    }
}

/// JSON string escapes: any subset of characters as `\\uXXXX` (pairs
/// beyond the BMP), the short escapes sometimes.
fn json_encode(text: &[u8], seed: u64, upper: bool) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut out = String::new();
    let u = |out: &mut String, unit: u16| {
        out.push_str("\\u");
        for k in (0..4).rev() {
            out.push(hex_digit(((unit >> (4 * k)) & 15) as u8, upper));
        }
    };
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '"' | '\\' if r.coin() => {
                out.push('\\');
                out.push(c);
            }
            '/' if r.coin() => out.push_str("\\/"),
            '\n' if r.coin() => out.push_str("\\n"),
            c if c < ' ' || c == '"' || c == '\\' || r.coin() => {
                let mut units = [0u16; 2];
                for &unit in c.encode_utf16(&mut units).iter() {
                    u(&mut out, unit);
                }
            }
            c => out.push(c),
        }
    }
    out.into_bytes()
}

/// HTML references: any subset of characters as decimal, hex (leading
/// zeros, either case, `;` left out where it may be) or named ones.
fn html_encode(text: &[u8], seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut out = String::new();
    let chars: Vec<char> = String::from_utf8_lossy(text).chars().collect();
    for (k, &c) in chars.iter().enumerate() {
        let named = crate::broker::scrub::escapes::NAMED
            .iter()
            .filter(|(_, v)| v.starts_with(c))
            .map(|(n, _)| *n)
            .collect::<Vec<_>>();
        // A `;` may be left out where the next character cannot
        // extend the number.
        let next_digit = chars
            .get(k + 1)
            .is_some_and(|n| n.is_ascii_hexdigit() || *n == ';');
        let semi = if next_digit || r.coin() { ";" } else { "" };
        match r.next() % 4 {
            _ if c == '&' && named.is_empty() => out.push_str("&amp;"),
            0 if !named.is_empty() => {
                let n = named[(r.next() as usize) % named.len()];
                out.push('&');
                out.push_str(n);
                out.push(';');
            }
            1 => out.push_str(&format!("&#{}{semi}", u32::from(c))),
            2 => {
                let x = if r.coin() { "x" } else { "X" };
                let zeros = "0".repeat((r.next() % 3) as usize);
                let h = if r.coin() {
                    format!("{:X}", u32::from(c))
                } else {
                    format!("{:x}", u32::from(c))
                };
                out.push_str(&format!("&#{x}{zeros}{h}{semi}"));
            }
            _ if c == '&' => out.push_str("&amp;"),
            _ => out.push(c),
        }
    }
    out.into_bytes()
}

// --- Recovery: decode the output every way the family allows, leniently.

pub(super) fn percent_decode(s: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if plus_is_space && s[i] == b'+' {
            b' '
        } else {
            s[i]
        });
        i += 1;
    }
    out
}

pub(super) fn json_decode(s: &[u8]) -> Vec<u8> {
    // Through serde_json, one string at a time: the output is no JSON
    // document, so decode `"…"`-wrapped pieces between raw bytes.
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() {
            // The longest escape run from here that serde_json accepts.
            let mut best = None;
            for len in [12usize, 6, 2] {
                if let Some(piece) = s.get(i..i + len) {
                    let quoted = [b"\"", piece, b"\""].concat();
                    if let Ok(v) = serde_json::from_slice::<String>(&quoted) {
                        best = Some((v.into_bytes(), len));
                        break;
                    }
                }
            }
            if let Some((bytes, len)) = best {
                out.extend(bytes);
                i += len;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

pub(super) fn html_decode(s: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(s);
    let mut out = String::new();
    let mut rest = &text[..];
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let body = &rest[1..];
        let (num, radix, skip) =
            if let Some(h) = body.strip_prefix("#x").or_else(|| body.strip_prefix("#X")) {
                (h, 16, 3)
            } else if let Some(d) = body.strip_prefix('#') {
                (d, 10, 2)
            } else {
                ("", 0, 0)
            };
        if radix != 0 {
            let digits = num.chars().take_while(|c| c.is_digit(radix)).count();
            if let Some(c) = u32::from_str_radix(&num[..digits], radix)
                .ok()
                .and_then(char::from_u32)
            {
                out.push(c);
                let semi = usize::from(num[digits..].starts_with(';'));
                rest = &rest[skip + digits + semi..];
                continue;
            }
        }
        let named = crate::broker::scrub::escapes::NAMED
            .iter()
            .find(|(n, _)| body.starts_with(&format!("{n};")));
        if let Some((n, v)) = named {
            out.push_str(v);
            rest = &rest[n.len() + 2..];
            continue;
        }
        out.push('&');
        rest = body;
    }
    out.push_str(rest);
    out.into_bytes()
}

pub(super) fn hex_decodes(s: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for run in s.split(|b| !b.is_ascii_hexdigit()) {
        for phase in 0..2 {
            if run.len() > phase
                && let Ok(v) = hex::decode(&run[phase..run.len() - (run.len() - phase) % 2])
            {
                out.push(v);
            }
        }
    }
    out
}

pub(super) fn base64_decodes(s: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(s)
        .replace("\\n", "")
        .replace(['\r', '\n'], "")
        .replace('-', "+")
        .replace('_', "/");
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let mut out = Vec::new();
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    for run in text.split(|c| !is_b64(c)) {
        for offset in 0..4 {
            if run.len() <= offset {
                continue;
            }
            let r = &run[offset..];
            let whole = r.len() - r.len() % 4;
            let mut body = r[..whole].to_owned();
            // A last group of 2 or 3 characters still decodes 1 or 2 bytes.
            if r.len() % 4 >= 2 {
                body.push_str(&r[whole..]);
            }
            if let Ok(v) = lenient.decode(&body) {
                out.push(v);
            }
        }
    }
    out
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Every reading of `output` by transformation `t`'s family.
pub(super) fn recoveries(t: Transform, output: &[u8]) -> Vec<Vec<u8>> {
    let mut all = vec![output.to_vec()];
    match t {
        Transform::Literal => {}
        Transform::Percent { .. } => {
            all.push(percent_decode(output, false));
            all.push(percent_decode(output, true));
        }
        Transform::Json { .. } => all.push(json_decode(output)),
        Transform::Html { .. } => all.push(html_decode(output)),
        Transform::Hex { .. } => all.extend(hex_decodes(output)),
        Transform::Base64 { .. } => all.extend(base64_decodes(output)),
    }
    all
}
