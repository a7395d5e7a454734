//! The broker's injection engine, with no I/O: given a request the agent
//! sent and the service it matched, what to strip, what to inject, and how
//! to scrub every injected value out of what comes back. The proxy and the
//! MCP server feed it request parts and body chunks.

use age::secrecy::{ExposeSecret, SecretBox};
use base64::Engine;
use zeroize::Zeroizing;

use crate::broker::services::{
    AGENT_SIGNATURE_HEADERS, Auth, AwsKeys, Service, TemplatePart, template_parts,
};
use crate::crypto::SecretValue;
use crate::error::{Error, Result};
use crate::names::SecretPath;

/// Headers through which an agent could send a credential of its own;
/// always removed before the real one is injected.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// A request as the engine sees it.
pub struct Outgoing {
    /// Path and query (`/v1/x?y=1`).
    pub path_and_query: String,
    /// Headers in order; names compared case-insensitively.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What to do to one request, and how to scrub its response.
pub struct Plan {
    /// Headers to set (replacing any the agent sent).
    set_headers: Vec<(String, SecretBox<Vec<u8>>)>,
    /// Headers to remove.
    strip_headers: Vec<String>,
    /// A query parameter to set.
    query: Option<(String, SecretBox<Vec<u8>>)>,
    /// Placeholders and their values, for headers, path, query and body.
    substitutions: Vec<(Vec<u8>, SecretBox<Vec<u8>>, SecretPath)>,
    /// Every injected value, in every encoding it could come back in.
    pub(crate) scrub: Vec<(SecretBox<Vec<u8>>, SecretPath)>,
    /// The secrets this plan may inject (names only: for the audit log).
    secrets: Vec<SecretPath>,
    /// The keys a SigV4 service signs with (the proxy signs).
    aws: Option<AwsKeys>,
    /// Built from `substitutions` once the plan is complete. (The
    /// response's scrubber is made from `scrub` by the scrubbing engine,
    /// `Scrubber::for_plan`.)
    substituter: StreamReplace,
}

/// Fetches a secret's value; the caller enforces the agent's grants.
pub type Resolve<'a> = dyn Fn(&SecretPath) -> Result<SecretValue> + 'a;

fn secret(bytes: &[u8]) -> SecretBox<Vec<u8>> {
    SecretBox::new(Box::new(bytes.to_vec()))
}

/// The encodings a value may be reflected in: as is, base64 (standard and
/// URL-safe), percent-encoded, JSON-escaped.
pub(crate) fn encodings(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let mut out = vec![Zeroizing::new(value.to_vec())];
    out.push(Zeroizing::new(STANDARD.encode(value).into_bytes()));
    out.push(Zeroizing::new(URL_SAFE_NO_PAD.encode(value).into_bytes()));
    let mut pct = Zeroizing::new(Vec::new());
    let mut json = Zeroizing::new(Vec::new());
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            pct.push(b);
        } else {
            pct.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
        match b {
            b'"' => json.extend_from_slice(b"\\\""),
            b'\\' => json.extend_from_slice(b"\\\\"),
            b'/' => json.extend_from_slice(b"\\/"),
            b'\n' => json.extend_from_slice(b"\\n"),
            b'\r' => json.extend_from_slice(b"\\r"),
            b'\t' => json.extend_from_slice(b"\\t"),
            c if c < 0x20 => json.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => json.push(c),
        }
    }
    out.push(pct);
    out.push(json);
    out.retain(|e| !e.is_empty());
    out.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
    out.dedup_by(|a, b| a.as_slice() == b.as_slice());
    out
}

impl Plan {
    /// Plans the injection for `service`. Placeholders in the request are
    /// only honoured for secrets the service lists.
    pub fn new(service: &Service, resolve: &Resolve<'_>) -> Result<Self> {
        let mut plan = Plan {
            set_headers: Vec::new(),
            strip_headers: CREDENTIAL_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
            query: None,
            substitutions: Vec::new(),
            scrub: Vec::new(),
            secrets: Vec::new(),
            aws: None,
            substituter: StreamReplace::new(Vec::new()),
        };
        let remember = |plan: &mut Plan, path: &SecretPath, injected: &[u8]| {
            for e in encodings(injected) {
                plan.scrub.push((secret(&e), path.clone()));
            }
            if !plan.secrets.contains(path) {
                plan.secrets.push(path.clone());
            }
        };
        match &service.auth {
            Auth::Bearer(p) => {
                let v = resolve(p)?;
                let mut h = Zeroizing::new(b"Bearer ".to_vec());
                h.extend_from_slice(v.expose_secret());
                remember(&mut plan, p, v.expose_secret());
                plan.set_headers.push(("authorization".into(), secret(&h)));
            }
            Auth::Basic { user, pass } => {
                let u = resolve(user)?;
                let mut pair = Zeroizing::new(u.expose_secret().clone());
                pair.push(b':');
                remember(&mut plan, user, u.expose_secret());
                if let Some(p) = pass {
                    let pv = resolve(p)?;
                    pair.extend_from_slice(pv.expose_secret());
                    remember(&mut plan, p, pv.expose_secret());
                }
                let encoded =
                    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*pair));
                remember(&mut plan, user, &pair);
                let mut h = Zeroizing::new(b"Basic ".to_vec());
                h.extend_from_slice(encoded.as_bytes());
                plan.set_headers.push(("authorization".into(), secret(&h)));
            }
            Auth::Header { name, template } => {
                let mut v = Zeroizing::new(Vec::new());
                for part in template_parts(template).map_err(Error::InvalidInput)? {
                    match part {
                        TemplatePart::Text(t) => v.extend_from_slice(t.as_bytes()),
                        TemplatePart::Secret(p) => {
                            let value = resolve(&p)?;
                            v.extend_from_slice(value.expose_secret());
                            remember(&mut plan, &p, value.expose_secret());
                        }
                    }
                }
                plan.strip_headers.push(name.to_ascii_lowercase());
                plan.set_headers
                    .push((name.to_ascii_lowercase(), secret(&v)));
            }
            Auth::Query { param, secret: p } => {
                let v = resolve(p)?;
                remember(&mut plan, p, v.expose_secret());
                plan.query = Some((param.clone(), secret(v.expose_secret())));
            }
            Auth::Passthrough => {}
            Auth::Sigv4(config) => {
                let keys = AwsKeys::resolve(config, resolve)?;
                for (p, v) in keys.values() {
                    remember(&mut plan, p, v);
                }
                plan.strip_headers
                    .extend(AGENT_SIGNATURE_HEADERS.iter().map(|h| (*h).to_owned()));
                plan.aws = Some(keys);
            }
        }
        for p in &service.secrets {
            let v = resolve(p)?;
            remember(&mut plan, p, v.expose_secret());
            plan.substitutions.push((
                format!("{{{{secret:{p}}}}}").into_bytes(),
                secret(v.expose_secret()),
                p.clone(),
            ));
        }
        for (placeholder, p) in &service.placeholders {
            let v = resolve(p)?;
            remember(&mut plan, p, v.expose_secret());
            plan.substitutions.push((
                placeholder.clone().into_bytes(),
                secret(v.expose_secret()),
                p.clone(),
            ));
        }
        plan.substituter = StreamReplace::new(
            plan.substitutions
                .iter()
                .map(|(placeholder, value, _)| (secret(placeholder), secret(value.expose_secret())))
                .collect(),
        );
        Ok(plan)
    }

    /// The keys to sign the request with, for a SigV4 service: the
    /// agent's signature headers are among [`Plan::strips`], and the
    /// caller signs the request as it goes upstream.
    pub fn aws(&self) -> Option<&AwsKeys> {
        self.aws.as_ref()
    }

    /// The secrets the plan injects or may substitute (names, for the audit).
    pub fn secrets(&self) -> &[SecretPath] {
        &self.secrets
    }

    /// Scrubs `value` from responses as if `path` had injected it, though
    /// this plan does not inject it: an OAuth credential's earlier access
    /// tokens, which an upstream may still reflect.
    pub fn also_scrub(&mut self, path: &SecretPath, value: &[u8]) {
        for e in encodings(value) {
            self.scrub.push((secret(&e), path.clone()));
        }
    }

    /// Strips the agent's credentials, injects the real one, and fills in
    /// placeholders in headers, path and query. A `{{secret:…}}` placeholder
    /// the service does not list is an error, never passed on.
    pub fn apply(&self, req: &mut Outgoing) -> Result<()> {
        req.headers
            .retain(|(n, _)| !self.strip_headers.iter().any(|s| s.eq_ignore_ascii_case(n)));
        let sub = self.substituter();
        for (_, v) in req.headers.iter_mut() {
            *v = sub.replace_all(v);
        }
        let pq = sub.replace_all(req.path_and_query.as_bytes());
        req.path_and_query = String::from_utf8(pq)
            .map_err(|_| Error::InvalidInput("the request path is not UTF-8".into()))?;
        Self::refuse_unlisted(
            std::iter::once(req.path_and_query.as_bytes())
                .chain(req.headers.iter().map(|(_, v)| v.as_slice())),
        )?;
        if let Some((param, value)) = &self.query {
            let (path, query) = match req.path_and_query.split_once('?') {
                Some((p, q)) => (p.to_owned(), q.to_owned()),
                None => (req.path_and_query.clone(), String::new()),
            };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(param.as_str()))
                .collect();
            let mut pq = path;
            pq.push('?');
            for kv in kept {
                pq.push_str(kv);
                pq.push('&');
            }
            pq.push_str(param);
            pq.push('=');
            for &b in value.expose_secret().iter() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    pq.push(b as char);
                } else {
                    pq.push_str(&format!("%{b:02X}"));
                }
            }
            req.path_and_query = pq;
        }
        for (name, value) in &self.set_headers {
            req.headers
                .push((name.clone(), value.expose_secret().clone()));
        }
        Ok(())
    }

    /// An error naming the first `{{secret:…}}` placeholder left in any of
    /// `texts` (one the service does not list: never passed on).
    pub fn refuse_unlisted<'a>(texts: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        for text in texts {
            if let Some(p) = unlisted_placeholder(text) {
                return Err(Error::InvalidInput(format!(
                    "the request names {p}, which this service may not use"
                )));
            }
        }
        Ok(())
    }

    /// Whether [`Plan::apply`] would only remove and set headers (nothing to
    /// fill in, no query parameter): a caller holding its own header map
    /// may then do just that, with [`Plan::strips`], [`Plan::sets`] and
    /// [`Plan::refuse_unlisted`], and skip the copy into [`Outgoing`].
    pub fn edits_headers_only(&self) -> bool {
        self.substitutions.is_empty() && self.query.is_none()
    }

    /// The headers removed from every request (lower case).
    pub fn strips(&self) -> &[String] {
        &self.strip_headers
    }

    /// The headers set (lower case), after those in [`Plan::strips`] are gone.
    pub fn sets(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.set_headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose_secret().as_slice()))
    }

    /// Fills placeholders into a request body, chunk by chunk.
    pub fn substituter(&self) -> StreamReplace {
        self.substituter.fresh()
    }
}

/// The first `{{secret:…}}` left in `text`, if any.
fn unlisted_placeholder(text: &[u8]) -> Option<String> {
    // Most texts hold none: looked for in the bytes first, with no copy and
    // a searcher made once (the placeholder is ASCII, so it is in the bytes
    // exactly when it is in their lossy reading).
    static OPEN: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"{{secret:"));
    OPEN.find(text)?;
    let s = String::from_utf8_lossy(text);
    let start = s.find("{{secret:")?;
    let end = s[start..]
        .find("}}")
        .map(|e| start + e + 2)
        .unwrap_or(s.len());
    Some(s[start..end.min(start + 200)].to_owned())
}

/// A pattern and what replaces it, both zeroized on drop.
type Pair = (SecretBox<Vec<u8>>, SecretBox<Vec<u8>>);

/// Replaces patterns in a stream of chunks, across chunk boundaries: it
/// holds back just enough of each chunk's end to see a pattern that starts
/// there. Leftmost match wins; among matches starting at one place, the
/// longest. Patterns and replacements are zeroized on drop.
pub struct StreamReplace {
    /// Shared between the replacers made from one plan (read-only).
    pairs: std::sync::Arc<[Pair]>,
    longest: usize,
    carry: Zeroizing<Vec<u8>>,
}

impl StreamReplace {
    fn new(mut pairs: Vec<Pair>) -> Self {
        pairs.retain(|(p, _)| !p.expose_secret().is_empty());
        // Longest first, so the first hit at a position is the longest.
        pairs.sort_by_key(|(p, _)| std::cmp::Reverse(p.expose_secret().len()));
        let longest = pairs
            .first()
            .map(|(p, _)| p.expose_secret().len())
            .unwrap_or(0);
        StreamReplace {
            pairs: pairs.into(),
            longest,
            carry: Zeroizing::new(Vec::new()),
        }
    }

    /// The same patterns with nothing carried over: for a new stream.
    fn fresh(&self) -> Self {
        StreamReplace {
            pairs: self.pairs.clone(),
            longest: self.longest,
            carry: Zeroizing::new(Vec::new()),
        }
    }

    /// Whether it replaces anything at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether `input` holds any of the patterns.
    pub fn finds(&self, input: &[u8]) -> bool {
        self.next_match(input, 0).is_some()
    }

    /// The next leftmost (then longest) match at or after `from`.
    fn next_match(&self, buf: &[u8], from: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (i, (p, _)) in self.pairs.iter().enumerate() {
            if let Some(pos) = memchr::memmem::find(&buf[from..], p.expose_secret()) {
                let at = from + pos;
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, i));
                }
            }
        }
        best
    }

    fn replace_upto(&self, buf: &[u8], limit: usize, out: &mut Vec<u8>) -> usize {
        // Replaces matches that start before `limit`; returns how far the
        // input was consumed.
        let mut pos = 0;
        while let Some((at, i)) = self.next_match(buf, pos) {
            if at >= limit {
                break;
            }
            out.extend_from_slice(&buf[pos..at]);
            out.extend_from_slice(self.pairs[i].1.expose_secret());
            pos = at + self.pairs[i].0.expose_secret().len();
        }
        let end = limit.max(pos);
        out.extend_from_slice(&buf[pos..end.min(buf.len())]);
        end.min(buf.len())
    }

    /// Feeds a chunk; returns what may be passed on now: everything but
    /// the shortest tail that could still begin a pattern (so a stream of
    /// events is passed on as it comes, not an event late).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.pairs.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = Zeroizing::new(std::mem::take(&mut *self.carry));
        buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        loop {
            // A match is only sure once no pattern could still start
            // before it and run past the end of what has arrived.
            let hold = self.partial_from(&buf, pos);
            match self.next_match(&buf, pos) {
                Some((at, i)) if at < hold => {
                    out.extend_from_slice(&buf[pos..at]);
                    out.extend_from_slice(self.pairs[i].1.expose_secret());
                    pos = at + self.pairs[i].0.expose_secret().len();
                }
                _ => {
                    out.extend_from_slice(&buf[pos..hold]);
                    pos = hold;
                    break;
                }
            }
        }
        self.carry = Zeroizing::new(buf[pos..].to_vec());
        out
    }

    /// The first position at or after `from` where the rest of `buf` is a
    /// proper beginning of some pattern (it may complete in the next
    /// chunk); `buf.len()` if there is none.
    fn partial_from(&self, buf: &[u8], from: usize) -> usize {
        let start = from.max(buf.len().saturating_sub(self.longest.saturating_sub(1)));
        (start..buf.len())
            .find(|&at| {
                let tail = &buf[at..];
                self.pairs.iter().any(|(p, _)| {
                    let p = p.expose_secret();
                    p.len() > tail.len() && p.starts_with(tail)
                })
            })
            .unwrap_or(buf.len())
    }

    /// Ends the stream; returns the rest.
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = Zeroizing::new(std::mem::take(&mut *self.carry));
        let mut out = Vec::with_capacity(buf.len());
        self.replace_upto(&buf, buf.len(), &mut out);
        out
    }

    /// Replaces in a whole buffer at once.
    pub fn replace_all(&self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        self.replace_upto(input, input.len(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::scrub::{Redaction, Scrubber};
    use crate::broker::services::template;
    use std::collections::BTreeMap;

    fn resolver(
        values: BTreeMap<&'static str, &'static [u8]>,
    ) -> impl Fn(&SecretPath) -> Result<SecretValue> {
        move |p: &SecretPath| {
            values
                .get(p.to_string().as_str())
                .map(|v| SecretBox::new(Box::new(v.to_vec())))
                .ok_or_else(|| Error::SecretNotFound(p.to_string()))
        }
    }

    fn req(pq: &str, headers: &[(&str, &str)]) -> Outgoing {
        Outgoing {
            path_and_query: pq.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn header<'a>(r: &'a Outgoing, name: &str) -> Vec<&'a [u8]> {
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn bearer_strips_and_injects() {
        let svc = template("github", &"gh/token".parse().unwrap()).unwrap();
        let r = resolver([("gh/token", &b"ghp_REAL"[..])].into());
        let plan = Plan::new(&svc, &r).unwrap();
        let mut q = req(
            "/user",
            &[
                ("Authorization", "Bearer agent-made-up"),
                ("Cookie", "x=1"),
                ("Accept", "*/*"),
            ],
        );
        plan.apply(&mut q).unwrap();
        assert_eq!(header(&q, "authorization"), vec![&b"Bearer ghp_REAL"[..]]);
        assert!(header(&q, "cookie").is_empty());
        assert_eq!(header(&q, "accept"), vec![&b"*/*"[..]]);
        assert_eq!(plan.secrets(), &["gh/token".parse::<SecretPath>().unwrap()]);
    }

    #[test]
    fn basic_header_query_and_placeholders() {
        let r = resolver(
            [
                ("s/user", &b"sk_live_1"[..]),
                ("s/pass", b"p@ss"),
                ("a/key", b"ant-KEY"),
                ("q/k", b"a b&c"),
                ("p/tok", b"TOK"),
            ]
            .into(),
        );
        let mut svc = template("stripe", &"s/user".parse().unwrap()).unwrap();
        svc.auth = Auth::Basic {
            user: "s/user".parse().unwrap(),
            pass: Some("s/pass".parse().unwrap()),
        };
        let plan = Plan::new(&svc, &r).unwrap();
        let mut q = req("/", &[]);
        plan.apply(&mut q).unwrap();
        let expect = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("sk_live_1:p@ss")
        );
        assert_eq!(header(&q, "authorization"), vec![expect.as_bytes()]);

        let svc = template("anthropic", &"a/key".parse().unwrap()).unwrap();
        let plan = Plan::new(&svc, &r).unwrap();
        let mut q = req(
            "/v1/messages",
            &[("x-api-key", "fake"), ("X-Api-Key", "fake2")],
        );
        plan.apply(&mut q).unwrap();
        assert_eq!(header(&q, "x-api-key"), vec![&b"ant-KEY"[..]]);

        let mut svc = svc.clone();
        svc.auth = Auth::Query {
            param: "api_key".into(),
            secret: "q/k".parse().unwrap(),
        };
        svc.secrets = vec!["p/tok".parse().unwrap()];
        let plan = Plan::new(&svc, &r).unwrap();
        let mut q = req(
            "/x/{{secret:p/tok}}?api_key=agent&z=1",
            &[("X-T", "t={{secret:p/tok}}")],
        );
        plan.apply(&mut q).unwrap();
        assert_eq!(q.path_and_query, "/x/TOK?z=1&api_key=a%20b%26c");
        assert_eq!(header(&q, "x-t"), vec![&b"t=TOK"[..]]);
        let mut bad = req("/{{secret:other/x}}", &[]);
        let err = plan.apply(&mut bad).err().unwrap().to_string();
        assert!(
            err.contains("other/x") && err.contains("may not use"),
            "{err}"
        );
        let mut body = plan.substituter();
        let mut out = body.push(b"{\"t\":\"{{secr");
        out.extend(body.push(b"et:p/tok}}\"}"));
        out.extend(body.finish());
        assert_eq!(out, b"{\"t\":\"TOK\"}");
    }

    #[test]
    fn scrubs_values_and_encodings_across_chunks() {
        let r = resolver([("g/k", &b"s3cr3t/value"[..])].into());
        let svc = template("openai", &"g/k".parse().unwrap()).unwrap();
        let plan = Plan::new(&svc, &r).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t/value");
        let body = format!(
            "echo: Bearer s3cr3t/value, json \"s3cr3t\\/value\", pct s3cr3t%2Fvalue, b64 {b64}, end"
        );
        let scrubber = Scrubber::for_plan(&plan, Redaction::Marker);
        for split in 1..body.len() {
            let mut s = scrubber.fresh();
            let mut out = Vec::new();
            for chunk in body.as_bytes().chunks(split) {
                out.extend(s.push(chunk));
            }
            out.extend(s.finish());
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("s3cr3t"), "split {split}: {text}");
            assert!(!text.contains(&b64), "split {split}: {text}");
            assert_eq!(
                text.matches("[REDACTED:g/k]").count(),
                4,
                "split {split}: {text}"
            );
            assert!(text.starts_with("echo: Bearer [REDACTED:g/k]") && text.ends_with(", end"));
        }
    }

    #[test]
    fn stream_replace_is_chunking_independent() {
        // Property: for any chunking, output equals the one-shot replacement.
        let pairs = || {
            vec![
                (secret(b"abcab"), secret(b"X")),
                (secret(b"ab"), secret(b"Y")),
                (secret(b"bca"), secret(b"Z")),
            ]
        };
        let mut seed = 12345u64;
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) as usize % 40;
            let input: Vec<u8> = (0..len)
                .map(|i| b"abc"[((seed >> (i % 60)) % 3) as usize])
                .collect();
            let whole = StreamReplace::new(pairs()).replace_all(&input);
            let step = 1 + (seed >> 40) as usize % 7;
            let mut s = StreamReplace::new(pairs());
            let mut out = Vec::new();
            for c in input.chunks(step) {
                out.extend(s.push(c));
            }
            out.extend(s.finish());
            assert_eq!(
                out,
                whole,
                "input {:?} step {step}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}

/// Injection into headers, query and body, and the scrubber and
/// substituter across every way a stream can be cut into chunks.
#[cfg(test)]
mod inject_rules {
    use super::*;
    use crate::broker::scrub::{Redaction, Scrubber};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn path(s: &str) -> SecretPath {
        s.parse().unwrap()
    }

    fn resolver(
        values: &'static [(&'static str, &'static [u8])],
    ) -> impl Fn(&SecretPath) -> Result<SecretValue> {
        move |p: &SecretPath| {
            values
                .iter()
                .find(|(k, _)| *k == p.to_string())
                .map(|(_, v)| SecretBox::new(Box::new(v.to_vec())))
                .ok_or_else(|| Error::SecretNotFound(p.to_string()))
        }
    }

    fn service(auth: Auth) -> Service {
        Service::new(vec!["api.example.com".into()], auth)
    }

    fn outgoing(pq: &str, headers: &[(&str, &str)]) -> Outgoing {
        Outgoing {
            path_and_query: pq.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn values<'a>(r: &'a Outgoing, name: &str) -> Vec<&'a [u8]> {
        r.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Feeds `input` cut at `cuts` (ascending) and returns the whole output.
    fn stream(mut s: StreamReplace, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend(s.push(&input[from..c]));
            from = c;
        }
        out.extend(s.finish());
        out
    }

    /// Every way to cut `len` bytes into up to three chunks (empty chunks
    /// included: a stream may deliver one).
    /// The same through the scrubbing engine.
    fn scrub_stream(s: &Scrubber, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = s.fresh();
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend(s.push(&input[from..c]));
            from = c;
        }
        out.extend(s.finish());
        out
    }

    /// The response scrubber the broker makes for `plan`.
    fn scrubber(plan: &Plan) -> Scrubber {
        Scrubber::for_plan(plan, Redaction::Marker)
    }

    fn two_cuts(len: usize) -> impl Iterator<Item = [usize; 2]> {
        (0..=len).flat_map(move |i| (i..=len).map(move |j| [i, j]))
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        memchr::memmem::find(hay, needle).is_some()
    }

    #[test]
    fn header_template_replaces_the_agents_header_in_any_case() {
        let r = resolver(&[("g/k", b"K3Y"), ("g/id", b"acct-9")]);
        let plan = Plan::new(
            &service(Auth::Header {
                name: "X-Api-Key".into(),
                template: "Key {{g/k}} for {{secret:g/id}}".into(),
            }),
            &r,
        )
        .unwrap();
        assert!(plan.edits_headers_only());
        let mut q = outgoing(
            "/v1",
            &[
                ("x-api-key", "agent-1"),
                ("X-API-KEY", "agent-2"),
                ("Proxy-Authorization", "Basic eA=="),
                ("Authorization", "Bearer agent"),
                ("Cookie", "s=1"),
                ("X-Other", "kept"),
            ],
        );
        plan.apply(&mut q).unwrap();
        assert_eq!(values(&q, "x-api-key"), vec![&b"Key K3Y for acct-9"[..]]);
        assert!(values(&q, "authorization").is_empty());
        assert!(values(&q, "proxy-authorization").is_empty());
        assert!(values(&q, "cookie").is_empty());
        assert_eq!(values(&q, "x-other"), vec![&b"kept"[..]]);
        assert_eq!(q.path_and_query, "/v1");
        assert_eq!(
            plan.secrets(),
            &[path("g/k"), path("g/id")],
            "both secrets, in template order"
        );
        let sets: Vec<_> = plan.sets().collect();
        assert_eq!(sets, vec![("x-api-key", &b"Key K3Y for acct-9"[..])]);
        assert!(plan.strips().iter().any(|s| s == "x-api-key"));
        // The scrubber knows each value on its own.
        assert_eq!(
            scrubber(&plan).replace_all(b"K3Y acct-9"),
            b"[REDACTED:g/k] [REDACTED:g/id]"
        );
    }

    #[test]
    fn header_template_errors() {
        let r = resolver(&[("g/k", b"v")]);
        for (template, why) in [
            ("{{g/k", "unclosed"),
            ("{{../x}}", "invalid secret name"),
            ("{{g/missing}}", "no secret g/missing"),
        ] {
            let err = Plan::new(
                &service(Auth::Header {
                    name: "x".into(),
                    template: template.into(),
                }),
                &r,
            )
            .err()
            .unwrap_or_else(|| panic!("{template} planned"));
            assert!(err.to_string().contains(why), "{template}: {err}");
        }
        let err = Plan::new(&service(Auth::Bearer(path("g/missing"))), &r)
            .err()
            .unwrap();
        assert!(matches!(err, Error::SecretNotFound(_)), "{err}");
    }

    #[test]
    fn query_parameter_is_set_once_and_encoded() {
        let r = resolver(&[("q/k", b"a+b/c=d&e f%")]);
        let plan = Plan::new(
            &service(Auth::Query {
                param: "key".into(),
                secret: path("q/k"),
            }),
            &r,
        )
        .unwrap();
        assert!(!plan.edits_headers_only());
        for (input, want) in [
            ("/x", "/x?key=a%2Bb%2Fc%3Dd%26e%20f%25"),
            ("/x?", "/x?key=a%2Bb%2Fc%3Dd%26e%20f%25"),
            ("/x?a=1", "/x?a=1&key=a%2Bb%2Fc%3Dd%26e%20f%25"),
            (
                "/x?key=agent&a=1&key&keyx=2&&b=",
                "/x?a=1&keyx=2&b=&key=a%2Bb%2Fc%3Dd%26e%20f%25",
            ),
        ] {
            let mut q = outgoing(input, &[]);
            plan.apply(&mut q).unwrap();
            assert_eq!(q.path_and_query, want, "{input}");
            assert_eq!(q.path_and_query.matches("key=").count(), 1, "{input}");
        }
        // What comes back percent-encoded is scrubbed too.
        assert_eq!(
            scrubber(&plan).replace_all(b"echo a%2Bb%2Fc%3Dd%26e%20f%25!"),
            b"echo [REDACTED:q/k]!"
        );
    }

    #[test]
    fn placeholders_fill_path_headers_and_body_but_only_listed_ones() {
        let r = resolver(&[("p/tok", b"T0K"), ("p/pw", b"pw\"1")]);
        let mut svc = service(Auth::Passthrough);
        svc.secrets = vec![path("p/tok")];
        svc.placeholders = BTreeMap::from([("__PW__".to_owned(), path("p/pw"))]);
        let plan = Plan::new(&svc, &r).unwrap();
        assert!(!plan.edits_headers_only());
        let mut q = outgoing(
            "/a/{{secret:p/tok}}?pw=__PW__",
            &[("X-T", "{{secret:p/tok}}-__PW__")],
        );
        plan.apply(&mut q).unwrap();
        assert_eq!(q.path_and_query, "/a/T0K?pw=pw\"1");
        assert_eq!(values(&q, "x-t"), vec![&b"T0K-pw\"1"[..]]);
        for unlisted in ["{{secret:p/pw}}", "{{secret:other/x}}", "{{secret:p/tok"] {
            let mut q = outgoing("/", &[("X-T", unlisted)]);
            let err = plan.apply(&mut q).err().unwrap().to_string();
            assert!(err.contains("may not use"), "{unlisted}: {err}");
        }
        let body = br#"{"token":"{{secret:p/tok}}","pw":"__PW__","n":"{{secret:p/tok}}"}"#;
        let want = br#"{"token":"T0K","pw":"pw"1","n":"T0K"}"#;
        assert_eq!(plan.substituter().replace_all(body), want);
        for cuts in two_cuts(body.len()) {
            assert_eq!(
                stream(plan.substituter(), body, &cuts),
                want,
                "cut at {cuts:?}"
            );
        }
        // The pass-through service injects no credential, but still strips the agent's.
        let mut q = outgoing("/", &[("Authorization", "Bearer mine")]);
        plan.apply(&mut q).unwrap();
        assert!(values(&q, "authorization").is_empty());
    }

    #[test]
    fn scrubber_catches_a_value_cut_anywhere() {
        let r = resolver(&[("g/k", b"sk-live/Q+9")]);
        let plan = Plan::new(&service(Auth::Bearer(path("g/k"))), &r).unwrap();
        let encoded = [
            b"sk-live/Q+9".to_vec(),
            base64::engine::general_purpose::STANDARD
                .encode("sk-live/Q+9")
                .into_bytes(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode("sk-live/Q+9")
                .into_bytes(),
            b"sk-live%2FQ%2B9".to_vec(),
            b"sk-live\\/Q+9".to_vec(),
        ];
        let (scrub, mask) = (
            scrubber(&plan),
            Scrubber::for_plan(&plan, Redaction::SameLength),
        );
        for e in &encoded {
            let mut body = b"<<".to_vec();
            body.extend_from_slice(e);
            body.extend_from_slice(b">>");
            let whole = scrub.replace_all(&body);
            // (Base64's `=` padding holds none of the value: it stays.)
            assert!(
                whole == b"<<[REDACTED:g/k]>>" || whole == b"<<[REDACTED:g/k]=>>",
                "{}: {}",
                String::from_utf8_lossy(e),
                String::from_utf8_lossy(&whole)
            );
            for cuts in two_cuts(body.len()) {
                let out = scrub_stream(&scrub, &body, &cuts);
                assert_eq!(out, whole, "{} cut at {cuts:?}", String::from_utf8_lossy(e));
                let same = scrub_stream(&mask, &body, &cuts);
                assert_eq!(same.len(), body.len(), "cut at {cuts:?}");
                assert!(!contains(&same, b"sk-live"), "cut at {cuts:?}");
            }
        }
        // Byte by byte, with the value twice back to back (adjacent
        // matches are one marker).
        let body = b"sk-live/Q+9sk-live/Q+9";
        let mut s = scrub.fresh();
        let mut out = Vec::new();
        for b in body {
            out.extend(s.push(std::slice::from_ref(b)));
        }
        out.extend(s.finish());
        assert_eq!(out, b"[REDACTED:g/k]");
    }

    #[test]
    fn scrubber_holds_back_only_a_possible_beginning() {
        let r = resolver(&[("g/k", b"SECRET")]);
        let plan = Plan::new(&service(Auth::Bearer(path("g/k"))), &r).unwrap();
        let mut s = scrubber(&plan);
        // Nothing that could begin the value: all of it passes at once.
        assert_eq!(s.push(b"hello world.\n"), b"hello world.\n");
        // A last base64 character whose bits could be the value's first
        // ones waits, line break and all: wrapped base64 goes on on the
        // next line ('d' ends in the two bits 'S' starts with).
        assert_eq!(s.push(b"hello world\n"), b"hello worl");
        assert_eq!(s.push(b"next.\n"), b"d\nnext.\n");
        // A tail that could: held back until the next chunk decides.
        assert_eq!(s.push(b"data: SEC"), b"data: ");
        let mut out = s.push(b"OND\n");
        assert_eq!(out, b"SECOND\n");
        out.extend(s.push(b"x SECR"));
        assert!(!out.ends_with(b"SECR"), "{}", String::from_utf8_lossy(&out));
        out.extend(s.push(b"ET y\n"));
        assert_eq!(out, b"SECOND\nx [REDACTED:g/k] y\n");
        // A stream that ends on a partial value lets it out unchanged.
        assert_eq!(s.push(b"SE"), b"");
        assert_eq!(s.finish(), b"SE");
        // An empty plan passes everything through untouched.
        let none = Plan::new(&service(Auth::Passthrough), &r).unwrap();
        assert!(scrubber(&none).is_empty());
        assert_eq!(scrubber(&none).push(b"SECRET"), b"SECRET");
    }

    fn pattern() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(b"0123".to_vec()), 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// However a stream is cut, the output is the one-shot replacement.
        #[test]
        fn chunking_never_changes_the_output(
            patterns in prop::collection::vec(pattern(), 1..4),
            input in prop::collection::vec(prop::sample::select(b"01234".to_vec()), 0..64),
            mut cuts in prop::collection::vec(0usize..65, 0..8),
        ) {
            let pairs = || -> Vec<Pair> {
                patterns
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (secret(p), secret(&[b'<', b'a' + i as u8, b'>'])))
                    .collect()
            };
            cuts.iter_mut().for_each(|c| *c = (*c).min(input.len()));
            cuts.sort_unstable();
            let whole = StreamReplace::new(pairs()).replace_all(&input);
            let streamed = stream(StreamReplace::new(pairs()), &input, &cuts);
            prop_assert_eq!(&streamed, &whole);
            // Replacements share no byte with the patterns: none is left.
            for p in &patterns {
                prop_assert!(!contains(&whole, p));
            }
        }

        /// Arbitrary secret bytes, reflected in any of their encodings and
        /// cut anywhere, never come back.
        #[test]
        fn arbitrary_values_are_scrubbed(
            value in prop::collection::vec(any::<u8>(), 4..24),
            which in 0usize..5,
            cut in 0usize..200,
        ) {
            let leaked: &'static [u8] = Box::leak(value.clone().into_boxed_slice());
            let table: &'static [(&'static str, &'static [u8])] =
                Box::leak(Box::new([("g/k", leaked)]));
            let plan = Plan::new(&service(Auth::Bearer(path("g/k"))), &resolver(table)).unwrap();
            let enc = encodings(&value);
            let e = &enc[which % enc.len()];
            let mut body = b"{\"echo\":\"".to_vec();
            body.extend_from_slice(e);
            body.extend_from_slice(b"\"}");
            let cut = cut % (body.len() + 1);
            let out = scrub_stream(&scrubber(&plan), &body, &[cut]);
            prop_assert!(!contains(&out, &value), "raw value left");
            prop_assert!(contains(&out, b"[REDACTED:g/k]"));
        }
    }
}
