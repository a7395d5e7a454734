//! A decoded stream and where each of its bytes came from in the raw one.
//!
//! A family's scanner (see `family.rs`) turns raw bytes into decoded
//! bytes; most raw bytes decode to themselves, so the map is kept sparse:
//! a list of segments, each either *linear* (decoded byte `k` of the
//! segment came from raw byte `raw + k`) or a *unit* (every decoded byte of
//! the segment came from the whole raw span `raw..raw_end`, as the bytes of
//! `&#x1F600;` all come from its ten raw bytes).

use zeroize::{Zeroize, Zeroizing};

#[derive(Clone, Copy, Debug)]
struct Seg {
    /// Index in `bytes` of the segment's first decoded byte.
    at: usize,
    /// Raw offset (absolute in the stream) of its first raw byte.
    raw: u64,
    /// Raw offset just past its last raw byte.
    raw_end: u64,
    /// Linear (one raw byte per decoded byte) or one unit.
    linear: bool,
}

/// Decoded bytes and their raw origins.
#[derive(Default)]
pub(super) struct Decoded {
    /// The decoded bytes (zeroized on drop: they may hold a value).
    pub(super) bytes: Zeroizing<Vec<u8>>,
    segs: Vec<Seg>,
    /// Whether the last raw text scanned was a line break (for the base64
    /// scanner, which reads a blank line as the end of a run).
    pub(super) after_line_break: bool,
}

impl Decoded {
    /// Appends raw bytes starting at `raw` that map one to one onto
    /// `decoded` (the same bytes, or each one transformed in place).
    pub(super) fn push_linear(&mut self, raw: u64, decoded: &[u8]) {
        if decoded.is_empty() {
            return;
        }
        let at = self.bytes.len();
        self.bytes.extend_from_slice(decoded);
        self.map_linear(at, raw, decoded.len());
    }

    /// Appends raw bytes `bytes` starting at `raw`, each one read as `map`
    /// of it (no copy of them is made on the way).
    pub(super) fn push_linear_with(&mut self, raw: u64, bytes: &[u8], map: fn(&u8) -> u8) {
        if bytes.is_empty() {
            return;
        }
        let at = self.bytes.len();
        self.bytes.extend(bytes.iter().map(map));
        self.map_linear(at, raw, bytes.len());
    }

    /// Records that the `n` decoded bytes from `at` on came one for one
    /// from the raw bytes from `raw` on.
    fn map_linear(&mut self, at: usize, raw: u64, n: usize) {
        let end = raw + n as u64;
        if let Some(last) = self.segs.last_mut()
            && last.linear
            && last.raw_end == raw
        {
            last.raw_end = end;
            return;
        }
        self.segs.push(Seg {
            at,
            raw,
            raw_end: end,
            linear: true,
        });
    }

    /// Appends one linear byte (see [`Decoded::push_linear`]).
    pub(super) fn push_byte(&mut self, raw: u64, byte: u8) {
        self.push_linear(raw, &[byte]);
    }

    /// Appends the bytes one raw unit `raw..raw_end` decodes to.
    pub(super) fn push_unit(&mut self, raw: u64, raw_end: u64, decoded: &[u8]) {
        if decoded.is_empty() {
            return;
        }
        self.segs.push(Seg {
            at: self.bytes.len(),
            raw,
            raw_end,
            linear: false,
        });
        self.bytes.extend_from_slice(decoded);
    }

    /// The segment holding decoded byte `i` (which must exist).
    fn seg_of(&self, i: usize) -> usize {
        self.segs.partition_point(|s| s.at <= i).saturating_sub(1)
    }

    /// Raw offset where decoded byte `i` starts.
    pub(super) fn raw_start(&self, i: usize) -> u64 {
        let s = self.segs[self.seg_of(i)];
        if s.linear {
            s.raw + (i - s.at) as u64
        } else {
            s.raw
        }
    }

    /// Raw offset just past decoded byte `i`.
    pub(super) fn raw_end(&self, i: usize) -> u64 {
        let s = self.segs[self.seg_of(i)];
        if s.linear {
            s.raw + (i - s.at) as u64 + 1
        } else {
            s.raw_end
        }
    }

    /// Forgets everything (the bytes wiped), keeping the buffers.
    pub(super) fn clear(&mut self) {
        self.bytes.zeroize();
        self.segs.clear();
        self.after_line_break = false;
    }

    /// Forgets the decoded bytes before `i`.
    pub(super) fn drop_before(&mut self, i: usize) {
        if i == 0 {
            return;
        }
        if i >= self.bytes.len() {
            self.bytes.clear();
            self.segs.clear();
            return;
        }
        let first = self.seg_of(i);
        self.segs.drain(..first);
        if let Some(s) = self.segs.first_mut()
            && s.at < i
        {
            if s.linear {
                s.raw += (i - s.at) as u64;
            }
            s.at = i;
        }
        for s in &mut self.segs {
            s.at -= i;
        }
        self.bytes.drain(..i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_linear_and_unit_bytes_back() {
        let mut d = Decoded::default();
        d.push_linear(10, b"ab");
        d.push_unit(12, 15, b"C");
        d.push_linear(15, b"de");
        // A gap (a skipped line break) starts a new segment.
        d.push_linear(19, b"f");
        d.push_unit(20, 30, &[0xf0, 0x9f, 0x98, 0x80]);
        assert_eq!(&d.bytes[..], b"abCdef\xf0\x9f\x98\x80");
        assert_eq!((d.raw_start(0), d.raw_end(1)), (10, 12));
        assert_eq!((d.raw_start(2), d.raw_end(2)), (12, 15));
        assert_eq!((d.raw_start(4), d.raw_end(5)), (16, 20));
        assert_eq!((d.raw_start(7), d.raw_end(8)), (20, 30));
        d.drop_before(4);
        assert_eq!(&d.bytes[..], b"ef\xf0\x9f\x98\x80");
        assert_eq!((d.raw_start(0), d.raw_end(0)), (16, 17));
        d.drop_before(3);
        assert_eq!((d.raw_start(0), d.raw_end(2)), (20, 30));
        d.drop_before(10);
        assert!(d.bytes.is_empty());
    }
}
