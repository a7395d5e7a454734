//! A request path made unambiguous before a service's path prefix is
//! matched against it: [`normalize_path`], and why it refuses a path
//! ([`PathRefusal`]).

/// Why [`normalize_path`] refuses a request path: each is a path that
/// servers read differently, so no service's path prefix can be trusted to
/// cover it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathRefusal {
    /// The path does not start with `/`.
    NoLeadingSlash,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// An encoded `/` (`%2F`).
    EncodedSlash,
    /// An encoded backslash (`%5C`).
    EncodedBackslash,
    /// An encoded NUL (`%00`).
    EncodedNul,
    /// A raw backslash.
    Backslash,
    /// A control character.
    Control,
    /// A dot segment written with escapes (`%2e%2e`).
    EncodedDot,
    /// A segment a lenient server could read as `.` or `..` (`..;x`,
    /// `..%20`, `...`).
    DotLike,
    /// A double-encoded dot, slash, backslash, NUL or percent (the escape
    /// as found, upper case: `%252E`).
    DoubleEncoded(&'static str),
}

impl std::fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let encoded = |f: &mut std::fmt::Formatter<'_>, what: &str, d: u8| {
            write!(
                f,
                "the request path has an encoded {what} (%{d:02X}), which servers read differently; refused"
            )
        };
        match self {
            PathRefusal::NoLeadingSlash => f.write_str("the request path must start with /"),
            PathRefusal::MalformedEscape => {
                f.write_str("the request path has a malformed %-escape")
            }
            PathRefusal::EncodedSlash => encoded(f, "/", b'/'),
            PathRefusal::EncodedBackslash => encoded(f, "backslash", b'\\'),
            PathRefusal::EncodedNul => encoded(f, "NUL", 0),
            PathRefusal::Backslash => f.write_str(
                "the request path has a backslash, which some servers read as /; refused",
            ),
            PathRefusal::Control => {
                f.write_str("the request path has a control character; refused")
            }
            PathRefusal::EncodedDot => f.write_str(
                "the request path has a dot segment written with %-escapes (%2e); refused",
            ),
            PathRefusal::DotLike => f.write_str(
                "the request path has a segment some servers read as . or .. (dots with parameters, blanks or escapes); refused",
            ),
            PathRefusal::DoubleEncoded(double) => write!(
                f,
                "the request path has a double-encoded character ({double}); refused"
            ),
        }
    }
}

impl std::error::Error for PathRefusal {}

/// A request path (no query) made unambiguous, so that a service's path
/// prefix is matched against what every upstream will understand, and the
/// broker sends upstream exactly the path it matched:
///
/// - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///   decoded, every other escape is kept, with upper-case hex digits; bytes
///   outside ASCII, `?` and `#` are escaped;
/// - runs of `/` become one `/`;
/// - `.` and `..` segments are resolved as RFC 3986's remove_dot_segments
///   does (never above the root);
/// - refused, with the reason: an encoded `/`, `\` or NUL (`%2F`, `%5C`,
///   `%00`), a raw `\` or control character, a dot segment written with an
///   escape (`%2e%2e`), any other segment that a lenient server could read
///   as `.` or `..` (`..;x`, which Tomcat reads as `..`; `..%20`; `...`), a
///   double-encoded dot, slash, backslash, NUL or percent (`%252e`), a
///   malformed escape, a path not starting with `/`.
///
/// The result starts with `/`, holds no `.` or `..` segment and no empty
/// one, keeps a trailing `/`, and normalising it again changes nothing.
pub fn normalize_path(path: &str) -> std::result::Result<String, PathRefusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRefusal::NoLeadingSlash);
    }
    let ends_with_slash = bytes.len() > 1 && bytes[bytes.len() - 1] == b'/';
    let segments = path_segments(bytes, ends_with_slash)?;
    // Whether the path ends with a dot segment, which names the directory
    // it leaves: `/a/b/..` is `/a/`.
    let (out, trailing) = remove_dot_segments(segments)?;
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if normal.is_empty() || ends_with_slash || trailing {
        normal.push('/');
    }
    Ok(normal)
}

/// One segment of a request path as decoded, and whether an escape made
/// one of its dots.
#[derive(Default)]
struct Segment {
    text: String,
    encoded_dot: bool,
}

/// The segments of a path that starts with `/`, escapes decoded as
/// [`normalize_path`] says, or why the path is refused. With
/// `ends_with_slash`, the empty segment after the last `/` is left out.
fn path_segments(
    bytes: &[u8],
    ends_with_slash: bool,
) -> std::result::Result<Vec<Segment>, PathRefusal> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut current = Segment::default();
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                segments.push(std::mem::take(&mut current));
                i += 1;
            }
            b'%' => {
                escape(bytes.get(i + 1..i + 3), &mut current)?;
                i += 3;
            }
            b'\\' => {
                return Err(PathRefusal::Backslash);
            }
            b if b < 0x20 || b == 0x7f => {
                return Err(PathRefusal::Control);
            }
            // Outside ASCII, and `?` or `#` (which would end the path): escaped.
            b if b >= 0x80 || b == b'?' || b == b'#' => {
                current.text.push_str(&format!("%{b:02X}"));
                i += 1;
            }
            b => {
                current.text.push(b as char);
                i += 1;
            }
        }
    }
    if !ends_with_slash {
        segments.push(current);
    }
    Ok(segments)
}

/// The escape `%XX` (`digits` the two after `%`, if there are two) added to
/// `current`: an unreserved character decoded, any other kept with
/// upper-case hex digits; an encoded `/`, `\` or NUL refused.
fn escape(digits: Option<&[u8]>, current: &mut Segment) -> std::result::Result<(), PathRefusal> {
    let hex = |b: u8| -> Option<u8> { (b as char).to_digit(16).map(|d| d as u8) };
    let Some((Some(h), Some(l))) = digits.map(|d| (hex(d[0]), hex(d[1]))) else {
        return Err(PathRefusal::MalformedEscape);
    };
    let d = (h << 4) | l;
    match d {
        b'/' => return Err(PathRefusal::EncodedSlash),
        b'\\' => return Err(PathRefusal::EncodedBackslash),
        0 => return Err(PathRefusal::EncodedNul),
        d if d.is_ascii_alphanumeric() || b"-._~".contains(&d) => {
            current.text.push(d as char);
            current.encoded_dot |= d == b'.';
        }
        d => current.text.push_str(&format!("%{d:02X}")),
    }
    Ok(())
}

/// The segments with `.` and `..` resolved (never above the root) and
/// empty ones dropped, and whether the last one was a dot segment; or why
/// a segment is refused (a dot segment written with escapes, one a lenient
/// server could read as `.` or `..`, a double-encoded character).
fn remove_dot_segments(
    segments: Vec<Segment>,
) -> std::result::Result<(Vec<String>, bool), PathRefusal> {
    let mut out: Vec<String> = Vec::new();
    let mut trailing = false;
    for seg in segments {
        trailing = false;
        // What a lenient server could make of the segment: escapes decoded
        // (twice), parameters (`;x`) and trailing blanks cut off.
        let loose = decode_escapes(&decode_escapes(seg.text.as_bytes()));
        let name = loose.split(|&c| c == b';').next().unwrap_or(&[]);
        let name = name.trim_ascii_end();
        if !name.is_empty() && name.iter().all(|&c| c == b'.') {
            if seg.encoded_dot {
                return Err(PathRefusal::EncodedDot);
            }
            match seg.text.as_str() {
                "." => {}
                ".." => {
                    out.pop();
                }
                _ => {
                    return Err(PathRefusal::DotLike);
                }
            }
            trailing = true;
            continue;
        }
        let upper = seg.text.to_ascii_uppercase();
        for double in ["%252E", "%252F", "%255C", "%2500", "%2525"] {
            if upper.contains(double) {
                return Err(PathRefusal::DoubleEncoded(double));
            }
        }
        if !seg.text.is_empty() {
            out.push(seg.text);
        }
    }
    Ok((out, trailing))
}

/// `bytes` with every valid `%XX` escape decoded (others left as they are).
pub(super) fn decode_escapes(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h << 4) | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
