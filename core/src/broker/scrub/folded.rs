//! Scrubbing text that reached the broker lower-cased: header names (an
//! HTTP/1 parser folds them, HTTP/2 sends them so). A value written into a
//! name, or its base64, arrives with its letters lower-cased; the exact
//! patterns miss it, and what is left tells an agent the value but for the
//! case of a few letters. So names are looked through with every pattern
//! lower-cased too.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::family::{Edge, Pattern};
use super::{FamilyPatterns, Scrubber, Set};

impl Scrubber {
    /// The same values, every pattern ASCII lower-cased: for text whose
    /// letters have all been lower-cased.
    pub fn folded(&self) -> Scrubber {
        let families = self
            .set
            .families
            .iter()
            .map(|f| {
                let patterns: Vec<(Pattern, usize)> = f
                    .patterns
                    .iter()
                    .map(|(p, label)| {
                        let lower = Pattern {
                            bytes: Zeroizing::new(p.bytes.to_ascii_lowercase()),
                            // Case is gone: an edge's bits cannot be read.
                            left: p.left.map(|_| Edge::ANY),
                            right: p.right.map(|_| Edge::ANY),
                        };
                        (lower, *label)
                    })
                    .collect();
                FamilyPatterns::new(f.family, patterns)
            })
            .collect();
        Self::with_set(Arc::new(Set::new(
            families,
            self.set.markers.clone(),
            self.set.redaction,
        )))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::super::Redaction;
    use super::*;

    #[test]
    fn a_lower_cased_value_or_base64_of_it_is_found() {
        let value = b"tok_REAL_Value_123";
        let s = Scrubber::new([(&value[..], "api/token")], Redaction::Marker);
        let folded = s.folded();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b"x-tok_REAL_Value_123");
        let lowered = [
            "x-tok_real_value_123".to_owned(),
            format!("x-{}", b64.to_ascii_lowercase()),
        ];
        for text in &lowered {
            assert!(!s.finds(text.as_bytes()), "exact patterns miss {text}");
            assert!(folded.finds(text.as_bytes()), "{text}");
        }
        // Hex was found in either case already, and still is.
        assert!(folded.finds(b"x-746f6b5f5245414c5f56616c75655f313233"));
        assert!(!folded.finds(b"x-request-id"));
    }
}
