//! YAML in and out: every vault file is parsed through [`parse_yaml`], which
//! first bounds the document's size and shape ([`check_yaml_shape`]).

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// The largest YAML document this build parses (a vault file of any kind).
pub const MAX_YAML_BYTES: usize = 4 << 20;
/// The deepest nesting of collections a YAML document may have. Our files
/// nest five levels at most; the limit only keeps a hostile document from
/// costing the parser time before anything is verified.
pub const MAX_YAML_DEPTH: usize = 32;

/// Parses YAML, naming the file in the error. The document's size and
/// nesting are bounded before the parser sees it ([`check_yaml_shape`]).
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    check_yaml_shape(bytes).map_err(|why| Error::corrupt(path, why))?;
    serde_yaml_ng::from_slice(bytes).map_err(|e| Error::corrupt(path, format!("malformed: {e}")))
}

/// A cheap, linear pre-scan of a YAML document that refuses one larger than
/// [`MAX_YAML_BYTES`] or nested deeper than [`MAX_YAML_DEPTH`] (block
/// indentation levels, compact `- ` / `? ` entries and flow brackets
/// together), before the real parser spends time on it. It over-counts
/// rather than under-counts: a plain scalar such as `a:[b` may count as
/// nesting, which no file of ours has.
pub fn check_yaml_shape(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() > MAX_YAML_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_YAML_BYTES} this build reads",
            bytes.len()
        ));
    }
    let too_deep = || format!("nested more than {MAX_YAML_DEPTH} levels deep");
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut quote = Quote::None;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut block_scalar: Option<usize> = None;
    for line in bytes.split(|&b| b == b'\n') {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let rest = &line[indent..];
        let blank = rest.iter().all(u8::is_ascii_whitespace);
        if let Some(opened) = block_scalar {
            if blank || indent > opened {
                continue;
            }
            block_scalar = None;
        }
        if quote == Quote::None && (blank || rest.starts_with(b"#")) {
            continue;
        }
        let mut depth = indents.len();
        let mut i = 0;
        if quote == Quote::None && flow == 0 {
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            depth = indents.len();
            // Compact nesting on one line: `- - - x`, `? - x`.
            while i + 1 < rest.len() && matches!(rest[i], b'-' | b'?') && rest[i + 1] == b' ' {
                depth += 1;
                i += 2;
                while rest.get(i) == Some(&b' ') {
                    i += 1;
                }
            }
        }
        if depth + flow > MAX_YAML_DEPTH {
            return Err(too_deep());
        }
        let mut prev: Option<u8> = if i == 0 { None } else { Some(b' ') };
        let mut last_token_start = i;
        while i < rest.len() {
            let b = rest[i];
            match quote {
                Quote::Single => {
                    if b == b'\'' {
                        if rest.get(i + 1) == Some(&b'\'') {
                            i += 1; // `''` is a quote inside the string
                        } else {
                            quote = Quote::None;
                        }
                    }
                }
                Quote::Double => {
                    if b == b'\\' {
                        i += 1;
                    } else if b == b'"' {
                        quote = Quote::None;
                    }
                }
                Quote::None => {
                    if b == b'#' && matches!(prev, None | Some(b' ' | b'\t')) {
                        break;
                    }
                    let token_start =
                        matches!(prev, None | Some(b' ' | b'\t' | b'[' | b'{' | b',' | b':'));
                    if token_start && b != b' ' {
                        last_token_start = i;
                    }
                    match b {
                        b'\'' if token_start => quote = Quote::Single,
                        b'"' if token_start => quote = Quote::Double,
                        b'[' | b'{' if token_start => {
                            flow += 1;
                            if depth + flow > MAX_YAML_DEPTH {
                                return Err(too_deep());
                            }
                        }
                        b']' | b'}' if flow > 0 => flow -= 1,
                        _ => {}
                    }
                }
            }
            prev = Some(b);
            i += 1;
        }
        if quote == Quote::None && flow == 0 {
            // A block scalar (`key: |`, `- >-`): its lines are text, not nesting.
            let token = &rest[last_token_start.min(rest.len())..i.min(rest.len())];
            let token = token.trim_ascii_end();
            if matches!(token.first(), Some(b'|' | b'>'))
                && token[1..]
                    .iter()
                    .all(|c| matches!(c, b'+' | b'-' | b'0'..=b'9'))
            {
                block_scalar = Some(indent);
            }
        }
    }
    Ok(())
}

/// Serializes to YAML.
pub fn to_yaml<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data structures cannot fail.
    serde_yaml_ng::to_string(value)
        .unwrap_or_default()
        .into_bytes()
}
