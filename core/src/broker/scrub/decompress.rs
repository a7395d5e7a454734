//! A streaming decoder for a response's `Content-Encoding` (gzip, deflate,
//! br, in any sequence), feeding the scrubber plain bytes: a compressed
//! body is read, never passed on unread. An encoding it does not know is
//! refused, with a typed error, before any byte passes.

use std::io::Write;

/// Why a body could not be decoded. Never holds a byte of the body, nor
/// an encoding name the upstream chose (which could carry a value).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecompressError {
    /// A `Content-Encoding` the broker cannot decode: a registered one it
    /// does not support (named), or one it has never heard of (`None`).
    Unknown(Option<&'static str>),
    /// The body is not valid in its encoding (or ends too early).
    Corrupt {
        /// The encoding that failed.
        encoding: &'static str,
    },
    /// The decoded body grew past the limit given.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

impl std::fmt::Display for DecompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecompressError::Unknown(Some(name)) => write!(
                f,
                "the response is encoded with {name}, which the broker cannot decode (and so cannot scrub)"
            ),
            DecompressError::Unknown(None) => f.write_str(
                "the response has a content encoding the broker does not know (and so cannot scrub)",
            ),
            DecompressError::Corrupt { encoding } => {
                write!(f, "the response's {encoding} encoding is corrupt or cut short")
            }
            DecompressError::TooLarge { limit } => {
                write!(f, "the response decodes to more than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for DecompressError {}

/// Registered encodings (IANA's HTTP Content Coding registry) the broker
/// does not decode: named in the refusal, since no value can hide in them.
const UNSUPPORTED: &[&str] = &[
    "compress",
    "x-compress",
    "zstd",
    "dcb",
    "dcz",
    "aes128gcm",
    "exi",
    "pack200-gzip",
];

/// One decoding step.
enum Stage {
    Gzip(flate2::write::MultiGzDecoder<Vec<u8>>),
    /// HTTP's `deflate` is zlib; some servers send raw deflate. Which one
    /// is told by the first two bytes, held until they arrive.
    Deflate(Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Vec<u8>>),
    RawDeflate(flate2::write::DeflateDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Gzip(_) => "gzip",
            Stage::Deflate(_) | Stage::Zlib(_) | Stage::RawDeflate(_) => "deflate",
            Stage::Brotli(_) => "br",
        }
    }

    fn push(&mut self, input: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Stage::Gzip(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Stage::Deflate(head) => {
                head.extend_from_slice(input);
                if head.len() < 2 {
                    return Ok(Vec::new());
                }
                let head = std::mem::take(head);
                *self = if is_zlib_header(head[0], head[1]) {
                    Stage::Zlib(flate2::write::ZlibDecoder::new(Vec::new()))
                } else {
                    Stage::RawDeflate(flate2::write::DeflateDecoder::new(Vec::new()))
                };
                self.push(&head)
            }
            Stage::Zlib(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Stage::RawDeflate(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Stage::Brotli(d) => {
                d.write_all(input)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidData);
        match self {
            Stage::Gzip(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            // Fewer than two bytes: no valid stream is that short.
            Stage::Deflate(_) => Err(invalid()),
            Stage::Zlib(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Stage::RawDeflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Stage::Brotli(d) => {
                d.close()?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

/// Whether two bytes open a zlib stream (RFC 1950: deflate, a window of at
/// most 32 KiB, and a header check that is a multiple of 31).
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// Decodes a body, chunk by chunk, through every encoding its
/// `Content-Encoding` lists (last applied, first undone).
pub struct Decompress {
    stages: Vec<Stage>,
    limit: u64,
    produced: u64,
}

impl Decompress {
    /// The decoder for a `Content-Encoding` header's value: `None` when it
    /// names no encoding but `identity` (nothing to decode), an error for
    /// one the broker does not know. The decoded body may not exceed
    /// `limit` bytes.
    pub fn for_content_encoding(
        header: &[u8],
        limit: u64,
    ) -> Result<Option<Self>, DecompressError> {
        let mut stages = Vec::new();
        for token in header.split(|&b| b == b',') {
            let token = token.trim_ascii().to_ascii_lowercase();
            let stage = match token.as_slice() {
                b"" | b"identity" => continue,
                b"gzip" | b"x-gzip" => Stage::Gzip(flate2::write::MultiGzDecoder::new(Vec::new())),
                b"deflate" => Stage::Deflate(Vec::new()),
                b"br" => Stage::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 8192))),
                other => {
                    let known = UNSUPPORTED.iter().find(|u| u.as_bytes() == other);
                    return Err(DecompressError::Unknown(known.copied()));
                }
            };
            stages.push(stage);
        }
        stages.reverse();
        Ok((!stages.is_empty()).then_some(Decompress {
            stages,
            limit,
            produced: 0,
        }))
    }

    /// Feeds a chunk of the encoded body; returns what it decodes to so far.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, DecompressError> {
        self.run(chunk, false)
    }

    /// Ends the body; returns the rest. An encoded stream that has not
    /// ended is an error.
    pub fn finish(&mut self) -> Result<Vec<u8>, DecompressError> {
        self.run(&[], true)
    }

    fn run(&mut self, chunk: &[u8], end: bool) -> Result<Vec<u8>, DecompressError> {
        let mut data = chunk.to_vec();
        for stage in &mut self.stages {
            let encoding = stage.name();
            let corrupt = |_| DecompressError::Corrupt { encoding };
            let mut out = stage.push(&data).map_err(corrupt)?;
            if end {
                out.extend(stage.finish().map_err(corrupt)?);
            }
            data = out;
        }
        self.produced += data.len() as u64;
        if self.produced > self.limit {
            return Err(DecompressError::TooLarge { limit: self.limit });
        }
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub(crate) fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    fn decode_in_chunks(
        encoding: &str,
        body: &[u8],
        step: usize,
    ) -> Result<Vec<u8>, DecompressError> {
        let mut d = Decompress::for_content_encoding(encoding.as_bytes(), 1 << 20)?.unwrap();
        let mut out = Vec::new();
        for c in body.chunks(step) {
            out.extend(d.push(c)?);
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    #[test]
    fn every_encoding_in_any_chunking() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("line {i} s3cr3t\n").into_bytes())
            .collect();
        let cases = [
            ("gzip", gzip(&text)),
            ("x-gzip", gzip(&text)),
            ("deflate", zlib(&text)),
            ("deflate", raw_deflate(&text)),
            ("br", brotli(&text)),
            ("gzip, br", brotli(&gzip(&text))),
            ("identity, Deflate ,BR", brotli(&zlib(&text))),
        ];
        for (encoding, body) in &cases {
            for step in [1, 7, 1000, body.len()] {
                assert_eq!(
                    decode_in_chunks(encoding, body, step).as_deref(),
                    Ok(&text[..]),
                    "{encoding} step {step}"
                );
            }
        }
        // Two gzip members one after the other: both decoded.
        let two = [gzip(b"ab"), gzip(b"cd")].concat();
        assert_eq!(
            decode_in_chunks("gzip", &two, 3).as_deref(),
            Ok(&b"abcd"[..])
        );
    }

    #[test]
    fn refuses_unknown_corrupt_cut_and_too_large() {
        assert!(matches!(
            Decompress::for_content_encoding(b"identity", 1),
            Ok(None)
        ));
        assert!(matches!(Decompress::for_content_encoding(b"", 1), Ok(None)));
        let unknown = Decompress::for_content_encoding(b"gzip, s3cr3t", 1).err();
        assert_eq!(unknown, Some(DecompressError::Unknown(None)));
        let shown = unknown.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            !shown.contains("s3cr3t") && shown.contains("does not know"),
            "{shown}"
        );
        assert_eq!(
            Decompress::for_content_encoding(b"zstd", 1).err(),
            Some(DecompressError::Unknown(Some("zstd")))
        );
        let body = gzip(b"hello world");
        let cut = &body[..body.len() - 4];
        assert_eq!(
            decode_in_chunks("gzip", cut, 5),
            Err(DecompressError::Corrupt { encoding: "gzip" })
        );
        assert_eq!(
            decode_in_chunks("br", b"not brotli at all", 5),
            Err(DecompressError::Corrupt { encoding: "br" })
        );
        let br = brotli(b"hello world");
        assert_eq!(
            decode_in_chunks("br", &br[..br.len() - 2], 5),
            Err(DecompressError::Corrupt { encoding: "br" })
        );
        assert_eq!(
            decode_in_chunks("deflate", b"x", 5),
            Err(DecompressError::Corrupt {
                encoding: "deflate"
            })
        );
        let big = gzip(&vec![b'a'; 2 << 20]);
        assert_eq!(
            decode_in_chunks("gzip", &big, 4096),
            Err(DecompressError::TooLarge { limit: 1 << 20 })
        );
    }
}
