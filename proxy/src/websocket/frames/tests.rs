use agent_vault_core::broker::scrub::{Redaction, Scrubber};
use proptest::prelude::*;

use super::{Frames, Violation};

const VALUE: &[u8] = b"tok_REAL_VALUE_123";

fn frames() -> Frames {
    Frames::new(Scrubber::new([(VALUE, "api/token")], Redaction::SameLength))
}

/// A server's frame (never masked).
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xFFFF => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Reads frames back: (fin, opcode, payload) each.
fn parse(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (fin, opcode) = (bytes[0] & 0x80 != 0, bytes[0] & 0x0F);
        let (len, at) = match bytes[1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push((fin, opcode, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    out
}

fn has(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_value_split_across_a_messages_frames_is_masked() {
    let mut f = frames();
    let mut input = frame(false, 1, b"auth=tok_REAL_");
    input.extend(frame(true, 0, b"VALUE_123 ok"));
    let out = f.push(&input).unwrap();
    assert_eq!(out.len(), input.len(), "every length kept");
    let got = parse(&out);
    assert_eq!(got.len(), 2);
    let message: Vec<u8> = got.iter().flat_map(|(_, _, p)| p.clone()).collect();
    assert_eq!(message, b"auth=****************** ok");
    assert!(!got[0].0 && got[1].0, "the headers are the upstream's");
}

#[test]
fn a_message_goes_out_whole_when_it_ends() {
    // Its last bytes could start the value; the message ends there, so
    // nothing is held back for a next message that may never come.
    let mut f = frames();
    let input = frame(true, 1, b"hello tok_RE");
    let out = f.push(&input).unwrap();
    assert_eq!(out, input);
}

#[test]
fn an_unfinished_message_holds_back_only_what_could_start_a_value() {
    let mut f = frames();
    let first = frame(false, 1, b"hello tok_RE");
    let out = f.push(&first).unwrap();
    assert!(out.len() < first.len(), "the possible start waits");
    assert!(first.starts_with(&out));
    let rest = frame(true, 0, b"AL_VALUE_123");
    let mut all = out;
    all.extend(f.push(&rest).unwrap());
    let got = parse(&all);
    assert_eq!(got[0].2, b"hello ******");
    assert_eq!(got[1].2, b"************");
}

#[test]
fn a_ping_inside_a_fragmented_message_keeps_its_place_and_is_scrubbed() {
    let mut f = frames();
    let mut input = frame(false, 1, b"a tok_REAL");
    input.extend(frame(true, 9, b"ping tok_REAL_VALUE_123"));
    input.extend(frame(true, 0, b"_VALUE_123 b"));
    let out = f.push(&input).unwrap();
    let got = parse(&out);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1], (true, 9, b"ping ******************".to_vec()));
    assert_eq!(got[0].2, b"a ********");
    assert_eq!(got[2].2, b"********** b");
}

#[test]
fn frames_the_broker_cannot_scrub_are_refused() {
    // Masked (a server never masks): the payload would be unreadable.
    let mut masked = vec![0x81, 0x80 | 5, 1, 2, 3, 4];
    masked.extend_from_slice(b"abcde");
    assert_eq!(frames().push(&masked), Err(Violation::Masked));
    // RSV1: compressed (permessage-deflate) without it being negotiated.
    let mut deflated = frame(true, 1, b"xx");
    deflated[0] |= 0x40;
    assert_eq!(frames().push(&deflated), Err(Violation::Reserved));
    assert_eq!(frames().push(&frame(true, 3, b"x")), Err(Violation::Opcode));
    assert_eq!(
        frames().push(&frame(true, 9, &[b'a'; 126])),
        Err(Violation::Control)
    );
    assert_eq!(
        frames().push(&frame(false, 9, b"x")),
        Err(Violation::Control)
    );
}

#[test]
fn frames_piling_up_behind_an_unfinished_message_are_refused() {
    let mut f = frames();
    f.push(&frame(false, 1, b"tok_RE")).unwrap();
    let pings: Vec<u8> = (0..2000).flat_map(|_| frame(true, 9, b"")).collect();
    assert_eq!(f.push(&pings), Err(Violation::Backlog));
}

#[test]
fn long_frames_keep_their_extended_lengths() {
    let mut payload = vec![b'x'; 70_000];
    payload[69_000..69_000 + VALUE.len()].copy_from_slice(VALUE);
    let input = frame(true, 2, &payload);
    let out = frames().push(&input).unwrap();
    assert_eq!(out.len(), input.len());
    assert_eq!(out[..10], input[..10]);
    assert!(!has(&out, VALUE));
}

proptest! {
    /// Any message holding the value, cut into any frames, fed in any
    /// chunks: the same frames come out, none of them holding the value.
    #[test]
    fn any_framing_and_any_chunking(
        before in proptest::collection::vec(any::<u8>(), 0..40),
        after in proptest::collection::vec(any::<u8>(), 0..40),
        cuts in proptest::collection::vec(0usize..100, 0..5),
        chunk in 1usize..17,
        ping_at in proptest::option::of(0usize..6),
    ) {
        let mut message = before.clone();
        message.extend_from_slice(VALUE);
        message.extend_from_slice(&after);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (message.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([message.len()]) {
            pieces.push(&message[from..c.max(from)]);
            from = c.max(from);
        }
        let mut input = Vec::new();
        let n = pieces.len();
        for (i, p) in pieces.iter().enumerate() {
            if ping_at == Some(i) {
                input.extend(frame(true, 9, b"p"));
            }
            input.extend(frame(i + 1 == n, if i == 0 { 1 } else { 0 }, p));
        }
        let mut f = frames();
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            out.extend(f.push(c).unwrap());
        }
        out.extend(f.finish());
        prop_assert_eq!(out.len(), input.len());
        let got = parse(&out);
        let sent = parse(&input);
        prop_assert_eq!(got.len(), sent.len());
        for (g, s) in got.iter().zip(&sent) {
            prop_assert_eq!((g.0, g.1, g.2.len()), (s.0, s.1, s.2.len()));
        }
        let joined: Vec<u8> = got.iter().filter(|g| g.1 < 8).flat_map(|g| g.2.clone()).collect();
        prop_assert!(!has(&joined, VALUE));
    }
}
