//! The layout of the protocol messages.
//!
//! ```text
//! message   = version:u8, kind:u8, sender:id, body
//! id        = name_len:u8, name, started_ms:varint, nonce:varint
//! heartbeat = beat, counter, flags:u8 (bit 0: leaving), count, entry...
//! entry     = tag, (id | hash:u32 LE), beat, age_ms
//!             tag = state * 2 + (1 if the id is sent in full)
//!             state = 0 not ahead, 1 dead, counter + 2
//! interval  = from, to, delta            delta as in src/wire/delta.rs
//! request   = replica:id, since
//! reply     = replica:id, since, to, total, offset, bytes (to the end)
//! ```
//!
//! Numbers without a type are unsigned LEB128 varints. Counters, heartbeat
//! numbers and start times above [`MAX_COUNTER`] (2^53) are refused. Heartbeats go to
//! every peer every period, so their entries are a few bytes each: a
//! replica the receiver already knows is named by a hash of its id, and a
//! counter is left out when the receiver is not behind on it.

use super::msgpack::{Reader, write_varint};
use super::{Kind, VERSION, WireError, delta};
use crate::protocol::message::{
    DigestEntry, EntryId, EntryState, Envelope, Heartbeat, Message, ReplyChunk,
};
use crate::state::{Incarnation, MAX_COUNTER, Meta, ReplicaId, ReplicaName};

pub(crate) fn encode<M: Meta>(
    sender: &ReplicaId,
    message: &Message<M>,
) -> Result<Vec<u8>, WireError> {
    let kind = match message {
        Message::Heartbeat(_) => Kind::Heartbeat,
        Message::Interval { .. } => Kind::Interval,
        Message::CatchUpRequest { .. } => Kind::CatchUpRequest,
        Message::CatchUpReply(_) => Kind::CatchUpReply,
    };
    let mut out = vec![VERSION, kind as u8];
    write_id(&mut out, sender);
    match message {
        Message::Heartbeat(hb) => {
            write_varint(&mut out, hb.beat);
            write_varint(&mut out, hb.counter);
            out.push(u8::from(hb.leaving));
            // An entry whose numbers a peer could not read back is left
            // out, never the whole heartbeat with it.
            let mut entries = Vec::with_capacity(hb.entries.len() * 8);
            let mut count = 0u64;
            for e in &hb.entries {
                let state = match e.state {
                    EntryState::NotAhead => Some(0),
                    EntryState::Dead => Some(1),
                    EntryState::Counter(c) => Some(c).filter(|&c| c <= MAX_COUNTER).map(|c| c + 2),
                };
                let (Some(state), true) = (state, e.beat <= MAX_COUNTER) else {
                    continue;
                };
                let full = matches!(e.id, EntryId::Full(_));
                write_varint(&mut entries, state * 2 + u64::from(full));
                match &e.id {
                    EntryId::Full(id) => write_id(&mut entries, id),
                    EntryId::Hash(h) => entries.extend_from_slice(&h.to_le_bytes()),
                }
                write_varint(&mut entries, e.beat);
                write_varint(&mut entries, e.age_ms);
                count += 1;
            }
            write_varint(&mut out, count);
            out.extend_from_slice(&entries);
        }
        Message::Interval { from, to, delta: d } => {
            write_varint(&mut out, *from);
            write_varint(&mut out, *to);
            delta::write(&mut out, d)?;
        }
        Message::CatchUpRequest { replica, since } => {
            write_id(&mut out, replica);
            write_varint(&mut out, *since);
        }
        Message::CatchUpReply(chunk) => {
            write_id(&mut out, &chunk.replica);
            for n in [chunk.since, chunk.to, chunk.total, chunk.offset] {
                write_varint(&mut out, n);
            }
            out.extend_from_slice(&chunk.bytes);
        }
    }
    Ok(out)
}

/// Decodes a protocol message of at most `max_message_bytes`.
pub(crate) fn decode<M: Meta>(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<Envelope<M>, WireError> {
    let (mut r, kind) = super::open(bytes, max_message_bytes)?;
    let sender = read_id(&mut r)?;
    let message = match kind {
        k if k == Kind::Heartbeat as u8 => Message::Heartbeat(read_heartbeat(&mut r)?),
        k if k == Kind::Interval as u8 => {
            let from = counter(&mut r)?;
            let to = counter(&mut r)?;
            let delta = delta::read(&mut r)?;
            Message::Interval { from, to, delta }
        }
        k if k == Kind::CatchUpRequest as u8 => Message::CatchUpRequest {
            replica: read_id(&mut r)?,
            since: counter(&mut r)?,
        },
        k if k == Kind::CatchUpReply as u8 => Message::CatchUpReply(ReplyChunk {
            replica: read_id(&mut r)?,
            since: counter(&mut r)?,
            to: counter(&mut r)?,
            total: r.varint()?,
            offset: r.varint()?,
            bytes: r.rest().to_vec(),
        }),
        other => return Err(WireError::UnknownKind(other)),
    };
    super::finish(&r, Envelope { sender, message })
}

fn read_heartbeat(r: &mut Reader<'_>) -> Result<Heartbeat, WireError> {
    let beat = counter(r)?;
    let own = counter(r)?;
    let flags = r.byte()?;
    if flags > 1 {
        return Err(WireError::Malformed("unknown heartbeat flags"));
    }
    let count = r.varint()?;
    // An entry takes at least seven bytes: no reserve beyond the input.
    if count > (r.remaining() / 7) as u64 {
        return Err(WireError::Truncated);
    }
    let mut entries = Vec::new();
    for _ in 0..count {
        let tag = r.varint()?;
        let id = if tag & 1 == 1 {
            EntryId::Full(read_id(r)?)
        } else {
            let b = r.take(4)?;
            EntryId::Hash(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let state = match tag >> 1 {
            0 => EntryState::NotAhead,
            1 => EntryState::Dead,
            s if s - 2 <= MAX_COUNTER => EntryState::Counter(s - 2),
            _ => return Err(WireError::Malformed("counter above 2^53")),
        };
        entries.push(DigestEntry {
            id,
            beat: counter(r)?,
            age_ms: r.varint()?,
            state,
        });
    }
    Ok(Heartbeat {
        beat,
        counter: own,
        leaving: flags & 1 == 1,
        entries,
    })
}

fn write_id(out: &mut Vec<u8>, id: &ReplicaId) {
    let name = id.name().as_str().as_bytes();
    // Names are at most 255 bytes: `ReplicaName` checks it.
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    write_varint(out, id.incarnation().started_ms());
    write_varint(out, u64::from(id.incarnation().nonce()));
}

fn read_id(r: &mut Reader<'_>) -> Result<ReplicaId, WireError> {
    let len = r.byte()?;
    let name = std::str::from_utf8(r.take(usize::from(len))?)
        .map_err(|_| WireError::Malformed("replica name is not UTF-8"))?;
    let name = ReplicaName::new(name).map_err(|_| WireError::Malformed("invalid replica name"))?;
    let started_ms = counter(r)?;
    let nonce = u32::try_from(r.varint()?).map_err(|_| WireError::Malformed("nonce overflows"))?;
    Ok(ReplicaId::new(name, Incarnation::new(started_ms, nonce)))
}

/// A counter, heartbeat number or start time: at most [`MAX_COUNTER`].
fn counter(r: &mut Reader<'_>) -> Result<u64, WireError> {
    Some(r.varint()?)
        .filter(|&n| n <= MAX_COUNTER)
        .ok_or(WireError::Malformed("counter above 2^53"))
}
