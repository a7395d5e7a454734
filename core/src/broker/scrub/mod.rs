//! The scrubbing engine: finds every injected value in what an upstream
//! sends back, as it is or transformed (percent-encoded, JSON- or
//! HTML-escaped, hex, base64 of any text containing it; see
//! [`Family`]), and replaces the whole encoded span with
//! `[REDACTED:group/name]` (or, where lengths must not change, as many
//! `*`). It streams: each chunk is passed on at once but for a tail held
//! back while it could still begin a match, bounded by the longest value's
//! longest encoding.
//!
//! How: each family's scanner maps the raw stream onto a normalised one
//! (escapes decoded, case folded, line breaks dropped), keeping where each
//! normalised byte came from; the values, normalised the same way, are
//! looked for there, and a match is redacted over the raw bytes it came
//! from. So "any subset of the characters escaped" costs one scan, not one
//! pattern per variant, and the work is linear in the input.
//!
//! A compressed body is first decoded by [`Decompress`].

mod decoded;
mod decompress;
mod escapes;
mod family;
mod folded;
mod quick;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use age::secrecy::ExposeSecret;

use crate::broker::inject::Plan;
use decoded::Decoded;
pub use decompress::{Decompress, DecompressError};
pub use family::Family;
use family::Pattern;

/// The most scanned at once (see [`Scrubber::push`]).
const SLICE: usize = 64 * 1024;

/// What a match is replaced with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redaction {
    /// `[REDACTED:<label>]`, once per run of adjacent or overlapping matches.
    Marker,
    /// As many `*` as the bytes replaced: for framing that counts bytes.
    SameLength,
}

/// One family's patterns.
struct FamilyPatterns {
    family: Family,
    /// Each pattern and the index of its label.
    patterns: Vec<(Pattern, usize)>,
    /// For each pattern, the offsets of two of its rarest bytes: where
    /// the search looks first (a prefilter that keeps no copy of it).
    rare: Vec<(usize, usize)>,
    /// The length of the shortest pattern: a scanner never reads more
    /// bytes than it is given, so fewer raw bytes hold no match.
    shortest: usize,
}

impl FamilyPatterns {
    fn new(family: Family, patterns: Vec<(Pattern, usize)>) -> Self {
        let rare = patterns.iter().map(|(p, _)| rare_pair(&p.bytes)).collect();
        let shortest = patterns
            .iter()
            .map(|(p, _)| p.bytes.len())
            .min()
            .unwrap_or(0);
        FamilyPatterns {
            family,
            patterns,
            rare,
            shortest,
        }
    }
}

/// What a scrubber looks for, shared by every stream scrubbed with it.
struct Set {
    families: Vec<FamilyPatterns>,
    /// The marker of each value: `[REDACTED:<label>]`.
    markers: Vec<Vec<u8>>,
    redaction: Redaction,
    /// Every family's quick test at once, for short buffers.
    prefilter: quick::Prefilter,
}

impl Set {
    fn new(families: Vec<FamilyPatterns>, markers: Vec<Vec<u8>>, redaction: Redaction) -> Self {
        Set {
            prefilter: quick::Prefilter::new(&families),
            families,
            markers,
            redaction,
        }
    }
}

/// A found match: raw offsets (absolute in the stream) and its label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: u64,
    end: u64,
    label: usize,
}

/// One family's progress through the stream.
#[derive(Default)]
struct Progress {
    /// Raw offset up to which the family has scanned (a unit boundary).
    pos: u64,
    /// What it scanned that could still be part of a match.
    decoded: Decoded,
}

/// Scrubs a stream of chunks (see the module's docs). Make one per set of
/// values with [`Scrubber::new`], and one per stream with
/// [`Scrubber::fresh`]: the patterns are shared.
pub struct Scrubber {
    set: Arc<Set>,
    /// Raw bytes from offset `base` on: not yet passed on, or not yet
    /// scanned by every family.
    raw: Zeroizing<Vec<u8>>,
    base: u64,
    /// Raw offset up to which output has been produced.
    emitted: u64,
    /// Where the last marker written ends, if output ends with one.
    marker_until: Option<u64>,
    progress: Vec<Progress>,
    /// Matches not yet written out.
    spans: Vec<Span>,
    /// Markers (or runs of masks) written since this scrubber was made,
    /// over every stream it scrubbed (see [`Scrubber::redactions`]).
    redactions: u64,
}

impl Scrubber {
    /// A scrubber for `values`, each with the label its marker shows
    /// (`group/name`). Empty values are ignored.
    pub fn new<'a>(
        values: impl IntoIterator<Item = (&'a [u8], &'a str)>,
        redaction: Redaction,
    ) -> Self {
        let mut markers = Vec::new();
        let mut patterns: Vec<Vec<(Pattern, usize)>> =
            Family::ALL.iter().map(|_| Vec::new()).collect();
        for (value, label) in values {
            if value.is_empty() {
                continue;
            }
            let index = markers.len();
            markers.push(format!("[REDACTED:{label}]").into_bytes());
            for (family, found) in Family::ALL.iter().zip(&mut patterns) {
                for p in family.patterns(value) {
                    if !found.iter().any(|(q, _)| q.bytes == p.bytes) {
                        found.push((p, index));
                    }
                }
            }
        }
        let families = Family::ALL
            .iter()
            .zip(patterns)
            .filter(|(_, p)| !p.is_empty())
            .map(|(&family, p)| FamilyPatterns::new(family, p))
            .collect();
        Self::with_set(Arc::new(Set::new(families, markers, redaction)))
    }

    /// The scrubber for every value `plan` injects, each marker naming
    /// its secret (`[REDACTED:group/name]`).
    ///
    /// The plan lists each value beside the encodings of it that today's
    /// scrubber looks for (base64, percent, JSON); the families find
    /// those already, so an entry that is one of them is left out (a
    /// faster scan; one kept by mistake would only be looked for twice).
    pub fn for_plan(plan: &Plan, redaction: Redaction) -> Self {
        let entries: Vec<(&[u8], String)> = plan
            .scrub
            .iter()
            .map(|(v, p)| (v.expose_secret().as_slice(), p.to_string()))
            .collect();
        // Only an encoding of a value of the same secret is left out: the
        // value of another secret is scrubbed in every family of its own.
        let derived: Vec<(Zeroizing<Vec<u8>>, &str)> = entries
            .iter()
            .flat_map(|(v, l)| {
                derived_encodings(v)
                    .into_iter()
                    .map(move |d| (d, l.as_str()))
            })
            .collect();
        let kept = entries.iter().filter(|(v, l)| {
            !derived
                .iter()
                .any(|(d, dl)| d.as_slice() == *v && *dl == l.as_str())
        });
        Self::new(kept.map(|(v, l)| (*v, l.as_str())), redaction)
    }

    fn with_set(set: Arc<Set>) -> Self {
        let progress = set.families.iter().map(|_| Progress::default()).collect();
        Scrubber {
            set,
            raw: Zeroizing::new(Vec::new()),
            base: 0,
            emitted: 0,
            marker_until: None,
            progress,
            spans: Vec::new(),
            redactions: 0,
        }
    }

    /// The same values with nothing carried over: for a new stream.
    pub fn fresh(&self) -> Self {
        Self::with_set(self.set.clone())
    }

    /// Whether it looks for nothing at all.
    pub fn is_empty(&self) -> bool {
        self.set.families.is_empty()
    }

    /// How many replacements it has written since it was made (or made
    /// [`fresh`](Scrubber::fresh)), over every stream it scrubbed: one per
    /// marker, a run of adjacent or overlapping matches counting once.
    /// Not reset by [`Scrubber::finish`]. A count, never what was replaced.
    pub fn redactions(&self) -> u64 {
        self.redactions
    }

    /// Feeds a chunk; returns what may be passed on now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.is_empty() {
            return chunk.to_vec();
        }
        let mut out = Vec::with_capacity(chunk.len());
        // A large chunk in slices, so the working buffers stay small.
        for slice in chunk.chunks(SLICE) {
            self.raw.extend_from_slice(slice);
            self.advance(false, &mut out);
        }
        out
    }

    /// Feeds the stream's last chunk and ends it: what [`Scrubber::push`]
    /// then [`Scrubber::finish`] return, in one pass over a whole buffer
    /// when nothing came before it (a body in one chunk).
    pub fn push_last(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.is_fresh() {
            let (out, redactions) = self.scan_whole(chunk);
            self.redactions += redactions;
            return out;
        }
        let mut out = self.push(chunk);
        out.extend(self.finish());
        out
    }

    /// Whether nothing has been fed since it was made or last finished.
    fn is_fresh(&self) -> bool {
        self.base == 0
            && self.emitted == 0
            && self.raw.is_empty()
            && self.spans.is_empty()
            && self.progress.iter().all(|p| p.pos == 0)
    }

    /// Ends the stream; returns the rest. The scrubber is then fresh.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.finish_inner();
        self.reset();
        out
    }

    /// Forgets the stream, keeping the buffers (wiped) for the next one.
    fn reset(&mut self) {
        self.raw.zeroize();
        self.base = 0;
        self.emitted = 0;
        self.marker_until = None;
        for p in &mut self.progress {
            p.pos = 0;
            p.decoded.clear();
        }
        self.spans.clear();
    }

    fn finish_inner(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.is_empty() {
            self.advance(true, &mut out);
        }
        out
    }

    /// Scrubs a whole buffer at once.
    pub fn replace_all(&self, input: &[u8]) -> Vec<u8> {
        self.scan_whole(input).0
    }

    /// `input` scrubbed, in one pass, if it holds any of the values; `None`
    /// when it holds none (a header passes on untouched).
    pub fn scrubbed(&self, input: &[u8]) -> Option<Vec<u8>> {
        let (out, redactions) = self.scan(input)?;
        (redactions > 0).then_some(out)
    }

    /// Whether `input` holds any of the values, in any family.
    pub fn finds(&self, input: &[u8]) -> bool {
        self.scan(input)
            .is_some_and(|(_, redactions)| redactions > 0)
    }

    /// `input` scrubbed, and how many runs of matches were replaced.
    fn scan_whole(&self, input: &[u8]) -> (Vec<u8>, u64) {
        self.scan(input).unwrap_or_else(|| (input.to_vec(), 0))
    }

    /// [`Scrubber::scan_whole`], `None` when no family may find something;
    /// a buffer of at most [`SLICE`] bytes is scanned by only the families
    /// that may (a longer one streams through all of them).
    fn scan(&self, input: &[u8]) -> Option<(Vec<u8>, u64)> {
        let may = quick::Families::of(&self.set, input);
        if may.is_empty() {
            return None;
        }
        if input.len() <= SLICE {
            return Some(self.scan_at_once(input, may));
        }
        let mut s = self.fresh();
        let mut out = s.push(input);
        out.extend(s.finish_inner());
        Some((out, s.redactions))
    }

    /// [`Scrubber::scan_whole`] of a buffer of at most [`SLICE`] bytes, in
    /// one pass: each family of `may` reads it whole (`at_end`), straight
    /// from the raw bytes where it reads them one for one (`quick.rs`),
    /// else through its scanner; the matches are written out as streaming
    /// writes them. Streaming finds the same matches, only some of them in
    /// two goes.
    fn scan_at_once(&self, input: &[u8], may: quick::Families) -> (Vec<u8>, u64) {
        let mut spans = Vec::new();
        for (i, f) in self.set.families.iter().enumerate() {
            if !may.has(i) || quick::linear_spans(f, input, &mut spans) {
                continue;
            }
            let mut p = Progress::default();
            p.pos = f.family.scan(input, 0, true, &mut p.decoded) as u64;
            search(f, &p, true, &mut spans);
        }
        if spans.is_empty() {
            return (input.to_vec(), 0);
        }
        let mut out = Vec::with_capacity(input.len());
        let mut at = Emitted::default();
        write_out(
            &self.set,
            input,
            0,
            &mut spans,
            input.len() as u64,
            &mut at,
            &mut out,
        );
        (out, at.redactions)
    }

    /// Scans what has arrived with every family, writes out what no match
    /// can still reach, and forgets what no family needs any more.
    fn advance(&mut self, at_end: bool, out: &mut Vec<u8>) {
        let end = self.base + self.raw.len() as u64;
        let mut hold = end;
        for (f, p) in self.set.families.iter().zip(self.progress.iter_mut()) {
            let from = (p.pos - self.base) as usize;
            let n = f
                .family
                .scan(&self.raw[from..], p.pos, at_end, &mut p.decoded);
            p.pos += n as u64;
            let keep = search(f, p, at_end, &mut self.spans);
            let family_hold = if keep < p.decoded.bytes.len() {
                p.decoded.raw_start(keep)
            } else {
                p.pos
            };
            p.decoded.drop_before(keep);
            hold = hold.min(family_hold);
        }
        if at_end {
            hold = end;
        }
        self.emit(hold, out);
        let needed = self
            .progress
            .iter()
            .map(|p| p.pos)
            .fold(self.emitted, u64::min);
        let drop = (needed - self.base) as usize;
        self.raw.drain(..drop);
        self.base = needed;
    }

    /// Writes out the raw bytes before `hold`, each match replaced (a match
    /// that starts before `hold` is replaced whole, even past it).
    fn emit(&mut self, hold: u64, out: &mut Vec<u8>) {
        let mut at = Emitted {
            upto: self.emitted,
            marker_until: self.marker_until,
            redactions: 0,
        };
        write_out(
            &self.set,
            &self.raw,
            self.base,
            &mut self.spans,
            hold,
            &mut at,
            out,
        );
        self.emitted = at.upto;
        self.marker_until = at.marker_until;
        self.redactions += at.redactions;
    }
}

/// How far output has been written.
#[derive(Default)]
struct Emitted {
    /// Raw offset up to which output has been produced.
    upto: u64,
    /// Where the last marker written ends, if output ends with one.
    marker_until: Option<u64>,
    /// Runs of matches replaced.
    redactions: u64,
}

/// Writes out `raw` (its first byte at offset `base`) from `at` up to
/// `hold`, each match in `spans` replaced (a match that starts before
/// `hold` is replaced whole, even past it; adjacent or overlapping ones by
/// one marker); the matches that start at `hold` or later stay in `spans`.
fn write_out(
    set: &Set,
    raw: &[u8],
    base: u64,
    spans: &mut Vec<Span>,
    hold: u64,
    at: &mut Emitted,
    out: &mut Vec<u8>,
) {
    let range = |from: u64, to: u64| &raw[(from - base) as usize..(to - base) as usize];
    spans.sort_unstable();
    spans.dedup();
    let mut rest = Vec::new();
    for sp in std::mem::take(spans) {
        if sp.start >= hold {
            rest.push(sp);
            continue;
        }
        if sp.end <= at.upto {
            continue;
        }
        let stars = set.redaction == Redaction::SameLength;
        if sp.start <= at.upto && at.marker_until == Some(at.upto) {
            // Overlaps (or touches) the marker just written: extend it.
            if stars {
                out.resize(out.len() + (sp.end - at.upto) as usize, b'*');
            }
        } else {
            let start = sp.start.max(at.upto);
            at.redactions += 1;
            out.extend_from_slice(range(at.upto, start));
            if stars {
                out.resize(out.len() + (sp.end - start) as usize, b'*');
            } else {
                out.extend_from_slice(&set.markers[sp.label]);
            }
        }
        at.upto = sp.end;
        at.marker_until = Some(sp.end);
    }
    *spans = rest;
    if hold > at.upto {
        out.extend_from_slice(range(at.upto, hold));
        at.upto = hold;
    }
}

/// Encodings of `value` the families find whole: base64 (standard, padded;
/// URL-safe, unpadded), percent-encoded, JSON-escaped (as
/// `inject::encodings` writes them).
fn derived_encodings(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = crate::broker::inject::encodings(value);
    // Equal to the value itself: not an encoding to leave out.
    out.retain(|e| e.as_slice() != value);
    out
}

/// Finds `f`'s patterns in what `p` has scanned, adding each match's raw
/// span to `spans`; returns the index of the first scanned byte that a
/// match completed by later input could still include.
fn search(f: &FamilyPatterns, p: &Progress, at_end: bool, spans: &mut Vec<Span>) -> usize {
    let bytes = &p.decoded.bytes[..];
    for ((pattern, label), &rare) in f.patterns.iter().zip(&f.rare) {
        for m in find_all(bytes, &pattern.bytes, rare) {
            let (mut s, mut e) = (m, m + pattern.bytes.len());
            if s > 0 && pattern.left.is_some_and(|edge| edge.fits(bytes[s - 1])) {
                s -= 1;
            }
            if e < bytes.len() && pattern.right.is_some_and(|edge| edge.fits(bytes[e])) {
                e += 1;
            }
            spans.push(Span {
                start: p.decoded.raw_start(s),
                end: p.decoded.raw_end(e - 1),
                label: *label,
            });
        }
    }
    if at_end {
        return bytes.len();
    }
    // The earliest tail that is a proper beginning of a pattern (or a
    // whole one that takes the character after it, yet to come).
    let mut keep = bytes.len();
    for (pattern, _) in &f.patterns {
        let p = &pattern.bytes[..];
        let longest_tail = p.len() - usize::from(pattern.right.is_none());
        let lo = bytes.len().saturating_sub(longest_tail).min(keep);
        for i in memchr::memchr_iter(p[0], &bytes[lo..keep]) {
            let tail = &bytes[lo + i..];
            if p.starts_with(tail) {
                keep = lo + i;
                break;
            }
        }
    }
    // The character before a match to come is part of it when it holds
    // the value's first bits (a line break may come between them, as in
    // wrapped base64): one that fits some pattern's left edge waits; one
    // that fits none is let go, so a stream of lines is passed on as it
    // comes but for about one line end in four.
    if keep > 0
        && f.patterns
            .iter()
            .any(|(pattern, _)| pattern.left.is_some_and(|edge| edge.fits(bytes[keep - 1])))
    {
        keep -= 1;
    }
    keep
}

/// Offsets of two of the rarest bytes of `p` (by memchr's ranking of
/// bytes in common text).
fn rare_pair(p: &[u8]) -> (usize, usize) {
    memchr::arch::all::packedpair::Pair::new(p)
        .map(|pair| (usize::from(pair.index1()), usize::from(pair.index2())))
        .unwrap_or((0, 0))
}

/// Every place `p` occurs in `hay`, overlapping ones too: candidates
/// where `p`'s rare byte is (found with memchr), checked whole. A finder
/// built once per pattern would be faster still on small chunks, but keeps
/// a copy of the pattern that is not zeroized.
fn find_all<'h>(
    hay: &'h [u8],
    p: &'h [u8],
    (r1, r2): (usize, usize),
) -> impl Iterator<Item = usize> + 'h {
    let last = hay.len().checked_sub(p.len());
    let region = match last {
        Some(last) => &hay[r1..=last + r1],
        None => &[][..],
    };
    memchr::memchr_iter(p[r1], region)
        .filter(move |&s| hay[s + r2] == p[r2] && &hay[s..s + p.len()] == p)
}
