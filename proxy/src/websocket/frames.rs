//! What an upstream sends an agent over a WebSocket, scrubbed frame by
//! frame. A byte-stream scrubber over the raw connection would miss a value
//! split across the frames of one message (a frame header sits between its
//! halves, and the agent's client joins them), and would hold a message's
//! last bytes back until the next message arrives. So the frames are read:
//! the payloads of a message's data frames are scrubbed as one stream (with
//! same-length masks, so every header stays true), each header goes out
//! unchanged in its place, and the scrubber is flushed at the end of every
//! message. A control frame (at most 125 bytes, never fragmented) is
//! scrubbed whole. Anything the scrubber could not read is refused: a
//! masked frame (a server never masks), a reserved bit set (the broker
//! removes `Sec-WebSocket-Extensions` from the handshake, so no extension,
//! permessage-deflate included, can be in use), a reserved opcode.

use std::collections::VecDeque;

use agent_vault_core::broker::scrub::Scrubber;

/// Why the upstream's frames were refused (the connection is then closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A frame from the server with its mask bit set.
    Masked,
    /// A reserved bit set: an extension (compression) nobody negotiated.
    Reserved,
    /// An opcode RFC 6455 reserves.
    Opcode,
    /// A control frame longer than 125 bytes or fragmented.
    Control,
    /// A length with its top bit set.
    Length,
    /// The scrubber changed a payload's length (it must not).
    Resized,
    /// Too many frames waiting behind a data frame whose end the scrubber
    /// holds back (bytes that may start a value, until the message goes on).
    Backlog,
}

/// How many frames may wait to go out; more is an upstream flooding the
/// agent with frames behind an unfinished message.
const MAX_WAITING: usize = 1024;

/// Where the reader is in the upstream's byte stream.
enum Reading {
    /// A frame's header, this much of it so far.
    Header(Vec<u8>),
    /// A data frame's payload: bytes left, and whether it ends its message.
    Data { left: u64, fin: bool },
    /// A control frame's payload: collected whole, then scrubbed.
    Control { left: usize, frame: Vec<u8> },
}

/// A frame on its way to the agent, in the order the upstream sent it.
enum Outgoing {
    /// A data frame: its header, its payload's length and how much of it
    /// has gone out (it comes from the scrubber, in order).
    Data {
        header: Vec<u8>,
        header_sent: bool,
        len: u64,
        sent: u64,
    },
    /// A control frame, whole and scrubbed.
    Control(Vec<u8>),
}

/// Reads the upstream's frames and gives back what may go to the agent.
pub(crate) struct Frames {
    scrub: Scrubber,
    reading: Reading,
    queue: VecDeque<Outgoing>,
    /// Scrubbed payload bytes not yet placed in their frames.
    payload: VecDeque<u8>,
    /// Runs masked in control frames (each scrubbed whole, apart).
    control_redactions: u64,
}

impl Frames {
    /// `scrub` must mask with same-length runs (`Redaction::SameLength`).
    pub(crate) fn new(scrub: Scrubber) -> Self {
        Frames {
            scrub,
            reading: Reading::Header(Vec::with_capacity(14)),
            queue: VecDeque::new(),
            payload: VecDeque::new(),
            control_redactions: 0,
        }
    }

    /// Feeds bytes from the upstream; returns the bytes that may go to the
    /// agent now.
    pub(crate) fn push(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Violation> {
        while !input.is_empty() {
            input = self.read(input)?;
        }
        Ok(self.drain())
    }

    /// The upstream closed: whatever the scrubber still holds goes out
    /// (only complete frames' bytes can be in it).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let rest = self.scrub.finish();
        self.payload.extend(rest);
        self.drain()
    }

    /// How many runs of matches were masked so far (control frames' too).
    pub(crate) fn redactions(&self) -> u64 {
        self.scrub.redactions() + self.control_redactions
    }

    /// Reads one step of `input`; returns what is left of it.
    fn read<'a>(&mut self, input: &'a [u8]) -> Result<&'a [u8], Violation> {
        match &mut self.reading {
            Reading::Header(head) => {
                let need = header_len(head).saturating_sub(head.len()).max(1);
                let take = need.min(input.len());
                head.extend_from_slice(&input[..take]);
                if head.len() >= 2 && head.len() == header_len(head) {
                    let head = std::mem::replace(head, Vec::with_capacity(14));
                    self.start_frame(head)?;
                }
                Ok(&input[take..])
            }
            Reading::Data { left, fin } => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *left -= take as u64;
                let ends = *left == 0 && *fin;
                let done = *left == 0;
                let out = self.scrub.push(&input[..take]);
                self.payload.extend(out);
                if ends {
                    let rest = self.scrub.finish();
                    self.payload.extend(rest);
                }
                if done {
                    self.reading = Reading::Header(Vec::with_capacity(14));
                }
                Ok(&input[take..])
            }
            Reading::Control { left, frame } => {
                let take = (*left).min(input.len());
                frame.extend_from_slice(&input[..take]);
                *left -= take;
                if *left == 0 {
                    let frame = std::mem::take(frame);
                    self.reading = Reading::Header(Vec::with_capacity(14));
                    self.end_control(frame)?;
                }
                Ok(&input[take..])
            }
        }
    }

    /// A whole header has been read: checks it and starts its payload.
    fn start_frame(&mut self, head: Vec<u8>) -> Result<(), Violation> {
        if self.queue.len() >= MAX_WAITING {
            return Err(Violation::Backlog);
        }
        let (b0, b1) = (head[0], head[1]);
        if b1 & 0x80 != 0 {
            return Err(Violation::Masked);
        }
        if b0 & 0x70 != 0 {
            return Err(Violation::Reserved);
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        let len = payload_len(&head);
        if len >> 63 != 0 {
            return Err(Violation::Length);
        }
        match opcode {
            0..=2 => {
                self.queue.push_back(Outgoing::Data {
                    header: head,
                    header_sent: false,
                    len,
                    sent: 0,
                });
                if len == 0 {
                    if fin {
                        let rest = self.scrub.finish();
                        self.payload.extend(rest);
                    }
                } else {
                    self.reading = Reading::Data { left: len, fin };
                }
                Ok(())
            }
            8..=10 => {
                if !fin || len > 125 {
                    return Err(Violation::Control);
                }
                if len == 0 {
                    self.queue.push_back(Outgoing::Control(head));
                } else {
                    self.reading = Reading::Control {
                        left: len as usize,
                        frame: head,
                    };
                }
                Ok(())
            }
            _ => Err(Violation::Opcode),
        }
    }

    /// A control frame's payload has been read whole: scrubs it.
    fn end_control(&mut self, mut frame: Vec<u8>) -> Result<(), Violation> {
        let at = header_len(&frame);
        let mut control = self.scrub.fresh();
        let clean = control.push_last(&frame[at..]);
        self.control_redactions += control.redactions();
        if clean.len() != frame.len() - at {
            return Err(Violation::Resized);
        }
        frame.truncate(at);
        frame.extend_from_slice(&clean);
        self.queue.push_back(Outgoing::Control(frame));
        Ok(())
    }

    /// Places scrubbed payload bytes in their frames, in order, and returns
    /// every byte that can go out now.
    fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(front) = self.queue.front_mut() {
            match front {
                Outgoing::Control(frame) => {
                    out.append(frame);
                    self.queue.pop_front();
                }
                Outgoing::Data {
                    header,
                    header_sent,
                    len,
                    sent,
                } => {
                    if !*header_sent {
                        out.append(header);
                        *header_sent = true;
                    }
                    let want = usize::try_from(*len - *sent).unwrap_or(usize::MAX);
                    let take = want.min(self.payload.len());
                    out.extend(self.payload.drain(..take));
                    *sent += take as u64;
                    if *sent < *len {
                        break;
                    }
                    self.queue.pop_front();
                }
            }
        }
        out
    }
}

/// A header's whole length, from what has been read of it (2 bytes at
/// least to know it).
fn header_len(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    match head[1] & 0x7F {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

/// A complete header's payload length.
fn payload_len(head: &[u8]) -> u64 {
    match head[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().unwrap_or([0xFF; 8])),
        n => u64::from(n),
    }
}

#[cfg(test)]
mod tests;
