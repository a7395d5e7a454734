//! A response's head on its way to the agent: hop-by-hop headers out, and
//! every place an injected value can hide in scrubbed: header values, the
//! status line's reason phrase, header names; and the codings its body is in.

use agent_vault_core::broker::scrub::Scrubber;
use hyper::HeaderMap;
use hyper::ext::ReasonPhrase;
use hyper::header::{HeaderName, HeaderValue};
use percent_encoding::percent_decode_str;

/// Every coding the body still has, in the order applied: those of each
/// `Content-Encoding` line (an upstream may split them over several), then
/// each `Transfer-Encoding` coding but `chunked` (the only one hyper
/// undoes: `gzip, chunked` would otherwise pass on gzipped, its header
/// dropped as hop-by-hop). `None` when there is none.
pub(crate) fn body_codings(headers: &HeaderMap) -> Option<Vec<u8>> {
    let content = headers.get_all(hyper::header::CONTENT_ENCODING).iter();
    let transfer = headers
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter(|c| !c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    let codings: Vec<&[u8]> = content.map(|v| v.as_bytes()).chain(transfer).collect();
    (!codings.is_empty()).then(|| codings.join(&b","[..]))
}

/// The status line's reason phrase, scrubbed like a header: hyper keeps
/// one the upstream wrote (if it is not the status's usual one) and writes
/// it on to an HTTP/1.1 agent.
pub(crate) fn scrub_reason(extensions: &mut hyper::http::Extensions, scrub: &Scrubber) {
    let Some(reason) = extensions.get::<ReasonPhrase>() else {
        return;
    };
    if let Some(clean) = scrub.scrubbed(reason.as_bytes()) {
        match ReasonPhrase::try_from(clean) {
            Ok(clean) => extensions.insert(clean),
            Err(_) => extensions.remove::<ReasonPhrase>(),
        };
    }
}

/// Headers whose name holds a value (hex and percent-encoding are valid
/// names) dropped: a name cannot be redacted. Names arrive lower-cased, so
/// `folded` is the scrubber with lower-cased patterns ([`Scrubber::folded`]),
/// and a percent-escaped letter is looked at decoded and lower-cased too.
pub(crate) fn drop_named(headers: &mut HeaderMap, folded: &Scrubber) {
    if folded.is_empty() {
        return;
    }
    let holds = |name: &str| {
        folded.finds(name.as_bytes())
            || (name.contains('%')
                && folded.finds(
                    &percent_decode_str(name)
                        .collect::<Vec<u8>>()
                        .to_ascii_lowercase(),
                ))
    };
    // Most responses have none: nothing allocated for them.
    remove_where(headers, |n| holds(n.as_str()));
}

/// The response's headers: hop-by-hop ones out (but those of an upgrade),
/// every injected value scrubbed (`names`: the same values lower-cased,
/// for header names); returns how many values were.
pub(crate) fn scrub_head(
    headers: &mut HeaderMap,
    scrub: &Scrubber,
    names: &Scrubber,
    switching: bool,
) -> u64 {
    // Edited in place: most responses carry no injected value, and their
    // headers pass without a copy. Out: hop-by-hop headers, but `Trailer`
    // (it names the trailers, scrubbed like the body, see `Rewritten`, and
    // an HTTP/1.1 agent only gets trailers it announces) and an upgrade's
    // own; the broker's error header (only its own answers carry it); and
    // the length, when a scrubbed body may change it.
    let out = |name: &HeaderName| {
        (HOP.contains(name)
            && *name != hyper::header::TRAILER
            && !(switching
                && (*name == hyper::header::UPGRADE || *name == hyper::header::CONNECTION)))
            || *name == ERROR_NAME
            || (!scrub.is_empty() && *name == hyper::header::CONTENT_LENGTH)
    };
    remove_where(headers, out);
    let mut scrubbed = 0;
    for v in headers.values_mut() {
        if let Some(clean) = scrub.scrubbed(v.as_bytes()) {
            *v = HeaderValue::from_bytes(&clean).unwrap_or(HeaderValue::from_static("[REDACTED]"));
            scrubbed += 1;
        }
    }
    drop_named(headers, names);
    scrubbed
}

/// Removes every header whose name `out` picks: each name looked at once
/// (a `remove` of each candidate would hash and probe for it, present or
/// not, on every response), nothing allocated when none is picked.
fn remove_where(headers: &mut HeaderMap, out: impl Fn(&HeaderName) -> bool) {
    if !headers.keys().any(&out) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| out(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// The broker's error header, as a name: compared as one, not as text.
static ERROR_NAME: HeaderName = HeaderName::from_static(crate::problem::ERROR_HEADER);

/// Hop-by-hop headers: never forwarded. Names, not strings: a string is
/// parsed into a name on every lookup.
pub(crate) static HOP: [HeaderName; 9] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

#[cfg(test)]
mod tests {
    use super::*;
    use agent_vault_core::broker::scrub::Redaction;
    use hyper::header::HeaderValue;

    fn scrubber() -> Scrubber {
        Scrubber::new([(&b"tok/en+1"[..], "g/n")], Redaction::Marker)
    }

    #[test]
    fn every_coding_line_and_transfer_coding_counts() {
        let mut h = HeaderMap::new();
        assert_eq!(body_codings(&h), None);
        h.append("content-encoding", HeaderValue::from_static("identity"));
        h.append("content-encoding", HeaderValue::from_static("gzip"));
        h.append("transfer-encoding", HeaderValue::from_static("br, Chunked"));
        let codings = body_codings(&h).unwrap();
        assert_eq!(String::from_utf8_lossy(&codings), "identity,gzip,br");
        let mut chunked = HeaderMap::new();
        chunked.append("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(body_codings(&chunked), None);
    }

    #[test]
    fn a_reason_phrase_and_a_name_holding_a_value_do_not_pass() {
        let s = scrubber();
        let mut ext = hyper::http::Extensions::new();
        ext.insert(ReasonPhrase::try_from(&b"OK tok%2Fen%2B1"[..]).unwrap());
        scrub_reason(&mut ext, &s);
        assert_eq!(
            ext.get::<ReasonPhrase>().unwrap().as_bytes(),
            b"OK [REDACTED:g/n]"
        );
        let mut h = HeaderMap::new();
        h.insert("x-746f6b2f656e2b31", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        // Lower-cased on the way in: the value and its base64 ("dG9rL2VuKzE").
        h.insert("x-tok%2fen%2b1", HeaderValue::from_static("3"));
        h.insert("x-dg9rl2vukze", HeaderValue::from_static("4"));
        // A letter percent-escaped upper-case (T is %54).
        h.insert("x-%54ok%2fen%2b1", HeaderValue::from_static("5"));
        drop_named(&mut h, &s.folded());
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-other"));
    }
}
