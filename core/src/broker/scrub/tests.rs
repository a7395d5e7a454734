//! The engine's tests: each family through the whole engine, then the
//! properties — every transformation × every offset of the value in a
//! larger text × every 2- and 3-way chunk split leaves nothing that decodes
//! back to the value, and text without the value passes byte for byte.
//!
//! The encoders and the "recover" decoders here are written apart from the
//! engine's scanners, so a scanner that misreads an encoding fails them.

use base64::Engine;

use super::*;

mod codec;
use codec::*;

const LABEL: &str = "g/k";
const MARKER: &str = "[REDACTED:g/k]";

fn scrubber(value: &[u8]) -> Scrubber {
    Scrubber::new([(value, LABEL)], Redaction::Marker)
}

/// Scrubs `input` cut at `cuts` (sorted offsets).
fn scrub_split(s: &Scrubber, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = s.fresh();
    let mut out = Vec::new();
    let mut from = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let c = c.clamp(from, input.len());
        out.extend(s.push(&input[from..c]));
        from = c;
    }
    out.extend(s.finish());
    out
}

/// The value is in the input (as `t` writes it) and in no reading of the
/// output; the text around the encoded part is intact.
fn check(value: &[u8], t: Transform, prefix: &[u8], suffix: &[u8], cuts: &[usize]) {
    let inner = [prefix, value, suffix].concat();
    let encoded = encode(t, &inner);
    let input = [b"<< ".as_slice(), &encoded, b" >>"].concat();
    assert!(
        recoveries(t, &input).iter().any(|r| contains(r, value)),
        "the test's own encoding lost the value: {t:?}"
    );
    let out = scrub_split(&scrubber(value), &input, cuts);
    for r in recoveries(t, &out) {
        assert!(
            !contains(&r, value),
            "{t:?} cuts {cuts:?}\n  in:  {:?}\n  out: {:?}",
            String::from_utf8_lossy(&input),
            String::from_utf8_lossy(&out)
        );
    }
    assert!(
        out.starts_with(b"<< ") && out.ends_with(b" >>") && contains(&out, MARKER.as_bytes()),
        "{t:?}: {:?}",
        String::from_utf8_lossy(&out)
    );
}

// --- Unit tests, one or more per family.

fn scrub(value: &str, input: &str) -> String {
    String::from_utf8_lossy(&scrubber(value.as_bytes()).replace_all(input.as_bytes())).into_owned()
}

#[test]
fn literal_and_encoded_forms_are_replaced_whole() {
    let v = "s3cr3t/va lue+";
    assert_eq!(scrub(v, "a s3cr3t/va lue+ b"), format!("a {MARKER} b"));
    assert_eq!(
        scrub(v, "?k=s3cr3t%2Fva+lue%2B&x"),
        format!("?k={MARKER}&x")
    );
    assert_eq!(
        scrub(v, "?k=%73%33cr3t/va%20lue%2b&x"),
        format!("?k={MARKER}&x")
    );
    assert_eq!(
        scrub(v, r#"{"k":"s3cr3t\/va\u0020lue\u002B"}"#),
        format!(r#"{{"k":"{MARKER}"}}"#)
    );
    assert_eq!(
        scrub(v, "<p>s3cr3t&sol;va&#32;lue&#x2b;</p>"),
        format!("<p>{MARKER}</p>")
    );
    let hex_upper = hex::encode_upper(v);
    assert_eq!(
        scrub(v, &format!("id={hex_upper}.")),
        format!("id={MARKER}.")
    );
    assert_eq!(
        scrub(v, &format!("id=0{}.", hex::encode(v))),
        format!("id=0{MARKER}.")
    );
}

#[test]
fn base64_of_text_containing_the_value_at_every_offset() {
    let v = b"ghp_16C7e42F292c6912E7710c838347Ae178B4a";
    for prefix in 0..6 {
        let text = [&b"{\"token\":\""[..prefix.min(10)], v, b"\"}"].concat();
        let e = base64::engine::general_purpose::STANDARD.encode(&text);
        let out = scrubber(v).replace_all(e.as_bytes());
        assert!(contains(&out, MARKER.as_bytes()), "{prefix}: {e}");
        assert!(base64_decodes(&out).iter().all(|d| !contains(d, v)));
    }
}

#[test]
fn github_contents_api_base64_with_json_line_breaks() {
    // GitHub's contents API: base64 in a JSON string, `\n` every 60.
    let v = b"AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI/K7MDENG";
    let file = [
        &b"# config\n\naws_key = \""[..],
        v,
        b"\"\nregion = \"eu\"\n",
    ]
    .concat();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&file);
    let lines: Vec<&[u8]> = b64.as_bytes().chunks(60).collect();
    let body = [
        &b"{\"encoding\":\"base64\",\"content\":\""[..],
        &lines.join(&b"\\n"[..]),
        b"\\n\"}",
    ]
    .concat();
    for step in [1, 5, 64, body.len()] {
        let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
        let out = scrub_split(&scrubber(v), &body, &cuts);
        assert!(contains(&out, MARKER.as_bytes()));
        assert!(
            base64_decodes(&out).iter().all(|d| !contains(d, v)),
            "step {step}"
        );
        assert!(out.starts_with(b"{\"encoding\":\"base64\",\"content\":\"IyBjb25maWcK"));
    }
}

#[test]
fn an_event_ending_in_a_blank_line_is_passed_on_whole_at_once() {
    // A base64 run of this value starts with `0`: the `0` ending the first
    // event could begin it, but not across the blank line.
    let s = scrubber(b"tok_REAL_VALUE_123");
    for event in [
        &b"data: event 0\n\n"[..],
        b"data: 0\r\n\r\n",
        b"id: Rva\n\n",
    ] {
        let mut s = s.fresh();
        assert_eq!(s.push(event), event);
        assert_eq!(s.push(b"data: event 1 tok_"), b"data: event 1 ");
        assert_eq!(
            s.push(b"REAL_VALUE_123\n\n"),
            format!("{MARKER}\n\n").as_bytes()
        );
    }
}

#[test]
fn same_length_keeps_every_length_and_finds_reports() {
    let v = b"tok-123456";
    let s = Scrubber::new([(v.as_slice(), LABEL)], Redaction::SameLength);
    let input = b"a tok-123456 b tok%2D123456 c";
    let out = s.replace_all(input);
    assert_eq!(out.len(), input.len());
    assert_eq!(&out[..], b"a ********** b ************ c");
    assert!(s.finds(b"x dG9rLTEyMzQ1Ng== y"));
    assert!(!s.finds(b"nothing here"));
    assert!(Scrubber::new([(&b""[..], LABEL)], Redaction::Marker).is_empty());
}

#[test]
fn two_values_overlapping_matches_become_one_marker() {
    let s = Scrubber::new(
        [(&b"abcdef"[..], "a/one"), (&b"defghi"[..], "a/two")],
        Redaction::Marker,
    );
    assert_eq!(s.replace_all(b"x abcdefghi y"), b"x [REDACTED:a/one] y");
    assert_eq!(
        s.replace_all(b"x abcdef defghi y"),
        b"x [REDACTED:a/one] [REDACTED:a/two] y"
    );
}

#[test]
fn redactions_are_counted_across_streams_and_runs_count_once() {
    let s = Scrubber::new(
        [(&b"abcdef"[..], "a/one"), (&b"defghi"[..], "a/two")],
        Redaction::Marker,
    );
    let mut one = s.fresh();
    assert_eq!(one.redactions(), 0);
    // Overlapping matches: one marker, one count; then a second marker
    // split over two chunks.
    let mut out = one.push(b"x abcdefghi y abc");
    out.extend(one.push(b"def z"));
    out.extend(one.finish());
    assert_eq!(out, b"x [REDACTED:a/one] y [REDACTED:a/one] z");
    assert_eq!(one.redactions(), 2);
    // `finish` starts a new stream, not a new count.
    let _ = one.push(b"defghi");
    let _ = one.finish();
    assert_eq!(one.redactions(), 3);
    assert_eq!(one.fresh().redactions(), 0);
    // Same-length masks count runs too.
    let mut masks = Scrubber::new([(&b"tok-123456"[..], LABEL)], Redaction::SameLength);
    let _ = masks.push(b"a tok-123456 b tok-123456");
    let _ = masks.finish();
    assert_eq!(masks.redactions(), 2);
}

#[test]
fn every_family_every_offset_every_two_and_three_way_split() {
    // Exhaustive over cut points for one value and a spread of encoders.
    let value = b"Sk_l1ve/x+y z&%\"e";
    for kind in 0..6u8 {
        for seed in 0..3u64 {
            let t = transform(seed * 31 + u64::from(kind), kind);
            for off in 0..4usize {
                let prefix = &b"pre\"fix"[..off];
                let suffix = &b"suf"[..off.min(3)];
                let n = encode(t, &[prefix, value, suffix].concat()).len() + 6;
                for a in 0..=n {
                    check(value, t, prefix, suffix, &[a]);
                }
                // 3-way: every pair of cuts, on a stride to keep it quick.
                for a in (0..=n).step_by(3) {
                    for b in (a..=n).step_by(2) {
                        check(value, t, prefix, suffix, &[a, b]);
                    }
                }
            }
        }
    }
}

/// Characters values and texts are made of: ASCII of every class the
/// encodings treat apart, and non-ASCII (2, 3 and 4 bytes in UTF-8).
const CHARS: &[char] = &[
    'a', 'Z', '0', '9', 'f', 'F', ' ', '+', '/', '=', '%', '&', '#', ';', '\\', '"', '\'', '<',
    '>', '_', '.', '~', '-', '\n', 'é', '€', '😀',
];

fn text(len: std::ops::Range<usize>) -> impl proptest::strategy::Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(CHARS), len)
        .prop_map(|cs| cs.into_iter().collect())
}

use proptest::strategy::Strategy;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    #[test]
    fn never_recoverable(
        value in text(6..20),
        prefix in text(0..7),
        suffix in text(0..5),
        kind in 0u8..6,
        seed in proptest::prelude::any::<u64>(),
        cuts in proptest::collection::vec(0usize..400, 0..3),
    ) {
        let t = transform(seed, kind);
        let mut cuts = cuts;
        cuts.sort_unstable();
        check(value.as_bytes(), t, prefix.as_bytes(), suffix.as_bytes(), &cuts);
    }

    #[test]
    fn text_without_the_value_passes_byte_for_byte(
        value in proptest::collection::vec(proptest::prelude::any::<u8>(), 12..40),
        input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        cuts in proptest::collection::vec(0usize..600, 0..3),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let out = scrub_split(&scrubber(&value), &input, &cuts);
        proptest::prop_assert_eq!(out, input);
    }

    #[test]
    fn text_without_the_value_passes_whatever_its_escapes(
        input in text(0..300),
        kind in 0u8..6,
        seed in proptest::prelude::any::<u64>(),
        cuts in proptest::collection::vec(0usize..1500, 0..3),
    ) {
        // Encoded text full of escapes, with a value it cannot hold (a
        // character that is in none of `CHARS`).
        let encoded = encode(transform(seed, kind), input.as_bytes());
        let mut cuts = cuts;
        cuts.sort_unstable();
        let out = scrub_split(&scrubber("kQ!ZxkQ!Zx@".as_bytes()), &encoded, &cuts);
        proptest::prop_assert_eq!(out, encoded);
    }
}

/// The shortest of `runs` timings of `f`, in seconds (the machine may be
/// shared: the shortest is the least disturbed).
fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let start = std::time::Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Throughput on a 1 MiB body (figures printed; run with
/// `cargo test -p agent-vault-core --release --lib scrub::tests::throughput -- --ignored --nocapture`).
#[test]
#[ignore]
fn throughput() {
    let mut body = Vec::new();
    let mut i = 0u64;
    while body.len() < 1 << 20 {
        body.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"item {i}\",\"url\":\"https://example.com/a%2Fb?x={i}&y=&amp;\",\"blob\":\"SGVsbG8gd29ybGQh{i:08x}\\n\"}},\n"
            )
            .as_bytes(),
        );
        i += 1;
    }
    body.truncate(1 << 20);
    let values: Vec<(Vec<u8>, String)> = (0..3)
        .map(|k| {
            (
                format!("sk_live_{k}abcdefghijklmnopqrstuvwx").into_bytes(),
                format!("g/s{k}"),
            )
        })
        .collect();
    let s = Scrubber::new(
        values.iter().map(|(v, l)| (v.as_slice(), l.as_str())),
        Redaction::Marker,
    );
    let svc = crate::broker::services::template("openai", &"g/s0".parse().expect("path"))
        .expect("template");
    let resolve =
        |_: &crate::names::SecretPath| -> crate::error::Result<crate::crypto::SecretValue> {
            Ok(age::secrecy::SecretBox::new(Box::new(values[0].0.clone())))
        };
    let plan = crate::broker::inject::Plan::new(&svc, &resolve).expect("plan");
    let build = best_of(200, || {
        let s = Scrubber::for_plan(&plan, Redaction::Marker);
        assert!(!s.is_empty());
    });
    let header = b"application/json; charset=utf-8";
    let finds = best_of(200, || assert!(!s.finds(header)));
    println!(
        "per response: for_plan {:.1} us; a header's finds {:.2} us",
        build * 1e6,
        finds * 1e6,
    );
    for chunk in [1 << 10, 16 << 10, 1 << 20] {
        let cuts: Vec<usize> = (chunk..body.len()).step_by(chunk).collect();
        let secs = best_of(20, || {
            let out = scrub_split(&s, &body, &cuts);
            assert_eq!(out.len(), body.len());
        });
        println!(
            "scrub engine, 3 values, 1 MiB in {} KiB chunks: {:.2} ms, {:.0} MiB/s",
            chunk >> 10,
            secs * 1e3,
            1.0 / secs
        );
    }
}

#[test]
fn base64_redacts_every_character_holding_a_bit_of_the_value() {
    // With the value at byte offset `a`, its bits are `8a..8a+8n`: the
    // characters `8a/6 ..= (8a+8n-1)/6` hold some of them, and all go.
    let v = b"xoxb-2A4f-value";
    for a in 0..7 {
        let text = [&b"0123456"[..a], v, b"tail"].concat();
        for url in [false, true] {
            let e = if url {
                base64::engine::general_purpose::URL_SAFE.encode(&text)
            } else {
                base64::engine::general_purpose::STANDARD.encode(&text)
            };
            let lo = 8 * a / 6;
            let hi = (8 * (a + v.len()) - 1) / 6 + 1;
            let expect = format!("{}{MARKER}{}", &e[..lo], &e[hi..]);
            for cut in 0..=e.len() {
                let out = scrub_split(&scrubber(v), e.as_bytes(), &[cut]);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    expect,
                    "offset {a} cut {cut}"
                );
            }
        }
    }
}

#[test]
fn wrapped_base64_redacts_the_edge_character_whatever_the_cut() {
    // A line break right after the character that holds the value's first
    // bits, and the stream cut right after the line break: that character
    // is part of the match the next chunk completes (it once went out).
    let v = b"xoxb-2A4f-value";
    for a in 0..7 {
        let text = [&b"0123456"[..a], v, b"tail"].concat();
        let e = base64::engine::general_purpose::STANDARD.encode(&text);
        let lo = 8 * a / 6;
        let hi = (8 * (a + v.len()) - 1) / 6 + 1;
        for br in 1..e.len() {
            let wrapped = format!("{}\n{}", &e[..br], &e[br..]);
            let expect = if br <= lo {
                format!("{}\n{}{MARKER}{}", &e[..br], &e[br..lo], &e[hi..])
            } else if br >= hi {
                format!("{}{MARKER}{}\n{}", &e[..lo], &e[hi..br], &e[br..])
            } else {
                format!("{}{MARKER}{}", &e[..lo], &e[hi..])
            };
            // Whole, as a body in one chunk is: the quick test lets a body
            // whose only escapes are line breaks by when the value's rare
            // bytes are not in it, never when they are.
            let whole = scrubber(v).replace_all(wrapped.as_bytes());
            assert_eq!(String::from_utf8_lossy(&whole), expect, "whole, break {br}");
            for cut in 0..=wrapped.len() {
                let out = scrub_split(&scrubber(v), wrapped.as_bytes(), &[cut]);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    expect,
                    "offset {a} break {br} cut {cut}"
                );
            }
        }
    }
}

#[test]
fn for_plan_scrubs_what_the_plan_injects_in_every_family() {
    use crate::broker::inject::Plan;
    let svc = crate::broker::services::template("openai", &"g/k".parse().expect("path"))
        .expect("template");
    let value = b"sk-proj/abc+def ghi".to_vec();
    let resolve =
        |_: &crate::names::SecretPath| -> crate::error::Result<crate::crypto::SecretValue> {
            Ok(age::secrecy::SecretBox::new(Box::new(value.clone())))
        };
    let plan = Plan::new(&svc, &resolve).expect("plan");
    let s = Scrubber::for_plan(&plan, Redaction::Marker);
    // The plan's derived encodings are left out: one value's patterns.
    let literal = s.set.families.iter().find(|f| f.family == Family::Literal);
    assert_eq!(literal.map(|f| f.patterns.len()), Some(1));
    for t in 0..6u8 {
        let tr = transform(7, t);
        let body = [
            b"x ".as_slice(),
            &encode(tr, &[b"ab".as_slice(), &value].concat()),
            b" y",
        ]
        .concat();
        let out = s.replace_all(&body);
        assert!(
            recoveries(tr, &out).iter().all(|r| !contains(r, &value)),
            "{tr:?}: {}",
            String::from_utf8_lossy(&out)
        );
        assert!(contains(&out, MARKER.as_bytes()), "{tr:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    /// Scrubbing a whole buffer (as a header is: a quick test first, see
    /// `quick.rs`) gives what streaming it in one chunk gives, in every
    /// family, with the value in it or not.
    #[test]
    fn whole_buffer_scrubbing_is_the_streams(
        value in text(4..12),
        prefix in text(0..7),
        suffix in text(0..5),
        kind in 0u8..6,
        seed in proptest::prelude::any::<u64>(),
        holds_value in proptest::prelude::any::<bool>(),
    ) {
        let t = transform(seed, kind);
        let inner = if holds_value {
            [prefix.as_bytes(), value.as_bytes(), suffix.as_bytes()].concat()
        } else {
            [prefix.as_bytes(), suffix.as_bytes()].concat()
        };
        let input = encode(t, &inner);
        let s = scrubber(value.as_bytes());
        let streamed = scrub_split(&s, &input, &[]);
        let found = streamed != input;
        proptest::prop_assert_eq!(&s.replace_all(&input), &streamed);
        proptest::prop_assert_eq!(s.finds(&input), found);
        proptest::prop_assert_eq!(s.scrubbed(&input), found.then_some(streamed));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    /// A body in one chunk is scrubbed in one pass (`push_last`, and the
    /// whole-buffer scan it uses): the same bytes as streaming it in any
    /// chunks, with two values (overlapping ones too), either redaction,
    /// and arbitrary bytes around them.
    #[test]
    fn one_pass_is_the_stream_for_two_values_and_any_bytes(
        a in text(4..10),
        b in text(4..10),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        kind in 0u8..6,
        seed in proptest::prelude::any::<u64>(),
        stars in proptest::prelude::any::<bool>(),
        cuts in proptest::collection::vec(0usize..300, 0..3),
    ) {
        let t = transform(seed, kind);
        let mut inner = noise.clone();
        inner.extend_from_slice(a.as_bytes());
        inner.extend_from_slice(&a.as_bytes()[a.len() / 2..]);
        inner.extend_from_slice(b.as_bytes());
        inner.extend_from_slice(&noise);
        let input = encode(t, &inner);
        let redaction = if stars { Redaction::SameLength } else { Redaction::Marker };
        let s = Scrubber::new([(a.as_bytes(), "g/a"), (b.as_bytes(), "g/b")], redaction);
        let streamed = scrub_split(&s, &input, &[]);
        proptest::prop_assert_eq!(&s.fresh().push_last(&input), &streamed);
        proptest::prop_assert_eq!(&s.replace_all(&input), &streamed);
        // Wherever the stream is cut, the same bytes: a chunk boundary
        // moves no marker's edge (a base64 character holding the value's
        // first bits waits for what follows, a line break too).
        let mut cuts = cuts;
        cuts.sort_unstable();
        proptest::prop_assert_eq!(&scrub_split(&s, &input, &cuts), &streamed);
        // After a first chunk, the last one goes through the stream.
        let half = cuts.first().copied().unwrap_or(input.len() / 2).min(input.len());
        let mut fed = s.fresh();
        let mut out = fed.push(&input[..half]);
        out.extend(fed.push_last(&input[half..]));
        proptest::prop_assert_eq!(&out, &streamed);
    }
}
