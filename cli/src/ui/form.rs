//! A submitted form (`application/x-www-form-urlencoded`), read so that no
//! copy of a value outlives it: the body is gathered into a zeroized buffer
//! and each field is decoded into one of its own, zeroized on drop.
//! (`form_urlencoded` would hand back plain `String`s, freed unzeroized.)

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use zeroize::Zeroizing;

/// The largest form body accepted: a few values and a reason.
pub(crate) const MAX_FORM: usize = 64 * 1024;

/// A decoded form: names and values, values zeroized on drop.
pub(crate) struct Form {
    fields: Vec<(String, Zeroizing<Vec<u8>>)>,
}

/// Why a body was not read.
pub(crate) enum FormError {
    /// Over [`MAX_FORM`].
    TooLarge,
    /// The connection failed while reading.
    Read,
}

/// Reads a request body into a zeroized buffer, at most [`MAX_FORM`] bytes.
pub(crate) async fn read_body(mut body: Incoming) -> Result<Zeroizing<Vec<u8>>, FormError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| FormError::Read)?;
        if let Ok(mut data) = frame.into_data() {
            if buf.len() + data.remaining() > MAX_FORM {
                return Err(FormError::TooLarge);
            }
            // Grow by hand so that no reallocation leaves an unzeroized copy.
            if buf.capacity() < buf.len() + data.remaining() {
                let mut bigger = Zeroizing::new(Vec::with_capacity(
                    (buf.len() + data.remaining()).max(buf.capacity() * 2),
                ));
                bigger.extend_from_slice(&buf);
                buf = bigger;
            }
            while data.has_remaining() {
                let chunk = data.chunk();
                buf.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Ok(buf)
}

impl Form {
    /// Decodes `a=1&b=x+y%21`.
    pub(crate) fn parse(body: &[u8]) -> Form {
        let mut fields = Vec::new();
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            let name = decode(name);
            let name = String::from_utf8_lossy(&name).into_owned();
            fields.push((name, decode(value)));
        }
        Form { fields }
    }

    /// The first field of this name.
    pub(crate) fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Takes the first field of this name out of the form.
    pub(crate) fn take(&mut self, name: &str) -> Option<Zeroizing<Vec<u8>>> {
        let i = self.fields.iter().position(|(n, _)| n == name)?;
        Some(self.fields.swap_remove(i).1)
    }
}

/// `+` is a space, `%XX` a byte; into a buffer sized once and zeroized.
fn decode(raw: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut plus = Zeroizing::new(Vec::with_capacity(raw.len()));
    plus.extend(raw.iter().map(|&b| if b == b'+' { b' ' } else { b }));
    let mut out = Zeroizing::new(Vec::with_capacity(raw.len()));
    out.extend(percent_encoding::percent_decode(&plus));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decodes_names_and_values() {
        let mut f = Form::parse(b"csrf=abc&value%3Aa%2Fb=x+y%21%2B&empty=&bare");
        assert_eq!(f.get("csrf"), Some(&b"abc"[..]));
        assert_eq!(f.get("empty"), Some(&b""[..]));
        assert_eq!(f.get("bare"), Some(&b""[..]));
        assert_eq!(f.take("value:a/b").unwrap().as_slice(), b"x y!+");
        assert!(f.get("value:a/b").is_none());
    }
}
