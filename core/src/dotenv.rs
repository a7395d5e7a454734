//! Parsing dotenv files for `import`: `KEY=VALUE` lines, optional `export `,
//! `#` comments, single quotes (literal) and double quotes (with `\n`, `\t`,
//! `\"` and `\\` escapes). Values are bytes; errors name the line, never the
//! value.

use crate::error::{Error, Result};
use crate::names::is_valid_secret_segment;

/// One `KEY=VALUE` entry. The value is zeroized on drop.
pub struct Entry {
    /// The key (a valid secret name segment).
    pub key: String,
    /// The value.
    pub value: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({}=<redacted>)", self.key)
    }
}

/// Parses a dotenv file.
pub fn parse(input: &[u8]) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut lines = input.split(|b| *b == b'\n').enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let lineno = i + 1;
        // Only leading blanks go here: a quoted value that spans lines keeps
        // the blanks at the end of its first line.
        let line = trim_start(strip_cr(raw));
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let line = line
            .strip_prefix(b"export ")
            .map(trim_start)
            .unwrap_or(line);
        let Some(eq) = line.iter().position(|b| *b == b'=') else {
            return Err(Error::InvalidInput(format!(
                "line {lineno}: expected KEY=VALUE"
            )));
        };
        let key = std::str::from_utf8(trim(&line[..eq]))
            .ok()
            .filter(|k| is_valid_secret_segment(k))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "line {lineno}: the key is not a valid secret name (letters, digits, '.', '_', '-'; starting with a letter or digit)"
                ))
            })?
            .to_owned();
        let after = &line[eq + 1..];
        let rest = trim_start(after);
        let mut value = zeroize::Zeroizing::new(Vec::new());
        match rest.first() {
            Some(b'\'') => {
                let mut buf: Vec<u8> = rest[1..].to_vec();
                loop {
                    if let Some(end) = buf.iter().position(|b| *b == b'\'') {
                        value.extend_from_slice(&buf[..end]);
                        break;
                    }
                    let Some((_, next)) = lines.next() else {
                        return Err(Error::InvalidInput(format!(
                            "line {lineno}: unterminated single quote"
                        )));
                    };
                    buf.push(b'\n');
                    buf.extend_from_slice(strip_cr(next));
                }
                zeroize::Zeroize::zeroize(&mut buf);
            }
            Some(b'"') => {
                let mut cur: Vec<u8> = rest[1..].to_vec();
                let mut pos = 0;
                loop {
                    if pos >= cur.len() {
                        let Some((_, next)) = lines.next() else {
                            return Err(Error::InvalidInput(format!(
                                "line {lineno}: unterminated double quote"
                            )));
                        };
                        value.push(b'\n');
                        cur = strip_cr(next).to_vec();
                        pos = 0;
                        continue;
                    }
                    match cur[pos] {
                        b'"' => break,
                        b'\\' if pos + 1 < cur.len() => {
                            value.push(match cur[pos + 1] {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                other => other,
                            });
                            pos += 2;
                        }
                        c => {
                            value.push(c);
                            pos += 1;
                        }
                    }
                }
                zeroize::Zeroize::zeroize(&mut cur);
            }
            // `K= # note`: blanks then a comment, an empty value.
            Some(b'#') if rest.len() < after.len() => {}
            _ => {
                // Unquoted: up to an inline comment (" #"), trimmed.
                let end = rest
                    .windows(2)
                    .position(|w| w == b" #" || w == b"\t#")
                    .unwrap_or(rest.len());
                value.extend_from_slice(trim(&rest[..end]));
            }
        }
        if out.iter().any(|e| e.key == key) {
            return Err(Error::InvalidInput(format!(
                "line {lineno}: {key} is set twice"
            )));
        }
        out.push(Entry { key, value });
    }
    Ok(out)
}

fn strip_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn trim(b: &[u8]) -> &[u8] {
    trim_end(trim_start(b))
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rev()
        .take_while(|c| c.is_ascii_whitespace())
        .count();
    &b[..b.len() - n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let src = b"# c\nA=1\nexport B = two words # note\nC='lit \\n $x'\nD=\"a\\nb\\\"c\"\nE=\nF=\"multi\nline\"\r\n";
        let e = parse(src).unwrap();
        let kv: Vec<(&str, &[u8])> = e
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_slice()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("A", &b"1"[..]),
                ("B", b"two words"),
                ("C", b"lit \\n $x"),
                ("D", b"a\nb\"c"),
                ("E", b""),
                ("F", b"multi\nline"),
            ]
        );
    }

    #[test]
    fn rejects_bad_lines_without_echoing_values() {
        for bad in [&b"NOEQUALS"[..], b"../x=1", b"A=\"open", b"A=1\nA=2"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("line "), "{err}");
        }
        let err = parse(b"A='sekrit").unwrap_err().to_string();
        assert!(!err.contains("sekrit"));
    }
}
