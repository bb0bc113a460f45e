//! The layout of the protocol messages, on top of the wire format's
//! primitives (varints, the delta layout).
//!
//! ```text
//! message   = version:u8, kind:u8, sender, body
//!             kind 2 heartbeat, 3 interval, 4 request, 5 reply
//! sender    = 0 (the authenticated peer of the link itself) | id
//! id        = name_len:u8 (1 to 255), name, started_ms, nonce
//! heartbeat = flags:u8, beat, counter, view:u32 LE, [wants], [entries]
//!             flags: bit 0 leaving, 1 digest, 2 answer,
//!                    3 wants follow, 4 entries follow
//! wants     = count, hash:u32 LE...
//! entries   = count, entry...
//! entry     = tag, (id | hash:u32 LE), beat, age_ms
//!             tag = state * 2 + (1 if the id is sent in full)
//!             state = 0 not ahead, 1 dead, counter + 2
//! interval  = from, to, delta            delta as in src/wire/delta.rs
//! request   = batch, count, (id, since)...
//! reply     = batch, total, offset, bytes (to the end)
//! ```
//!
//! Numbers without a type are unsigned LEB128 varints. Counters, heartbeat
//! numbers and start times above [`MAX_COUNTER`] (2^53) are refused.
//! Heartbeats go to every peer every period, so the common one is a dozen
//! bytes: the sender implied by the link, no wants, no entries.

use super::message::{DigestEntry, EntryId, EntryState, Envelope, Heartbeat, Message, ReplyChunk};
use crate::state::{Incarnation, MAX_COUNTER, Meta, ReplicaId, ReplicaName};
use crate::wire::msgpack::{Reader, write_varint};
use crate::wire::{self, VERSION, WireError, delta};

const HEARTBEAT: u8 = 2;
const INTERVAL: u8 = 3;
const REQUEST: u8 = 4;
const REPLY: u8 = 5;

const LEAVING: u8 = 1;
const DIGEST: u8 = 2;
const ANSWER: u8 = 4;
const WANTS: u8 = 8;
const ENTRIES: u8 = 16;

/// Encodes `message` from `sender`; `None` leaves the sender implied.
pub(crate) fn encode<M: Meta>(
    sender: Option<&ReplicaId>,
    message: &Message<M>,
) -> Result<Vec<u8>, WireError> {
    let kind = match message {
        Message::Heartbeat(_) => HEARTBEAT,
        Message::Interval { .. } => INTERVAL,
        Message::CatchUpRequest { .. } => REQUEST,
        Message::CatchUpReply(_) => REPLY,
    };
    let mut out = vec![VERSION, kind];
    match sender {
        Some(id) => write_id(&mut out, id),
        None => out.push(0),
    }
    match message {
        Message::Heartbeat(hb) => write_heartbeat(&mut out, hb),
        Message::Interval { from, to, delta: d } => {
            write_varint(&mut out, *from);
            write_varint(&mut out, *to);
            delta::write(&mut out, d)?;
        }
        Message::CatchUpRequest { batch, items } => {
            write_varint(&mut out, *batch);
            write_varint(&mut out, items.len() as u64);
            for (replica, since) in items {
                write_id(&mut out, replica);
                write_varint(&mut out, *since);
            }
        }
        Message::CatchUpReply(chunk) => {
            for n in [chunk.batch, chunk.total, chunk.offset] {
                write_varint(&mut out, n);
            }
            out.extend_from_slice(&chunk.bytes);
        }
    }
    Ok(out)
}

fn write_heartbeat(out: &mut Vec<u8>, hb: &Heartbeat) {
    // An entry whose numbers a peer could not read back is left out, never
    // the whole heartbeat with it.
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
    let mut flags = 0;
    for (set, bit) in [
        (hb.leaving, LEAVING),
        (hb.digest, DIGEST),
        (hb.answer, ANSWER),
        (!hb.wants.is_empty(), WANTS),
        (count > 0, ENTRIES),
    ] {
        if set {
            flags |= bit;
        }
    }
    out.push(flags);
    write_varint(out, hb.beat);
    write_varint(out, hb.counter);
    out.extend_from_slice(&hb.view.to_le_bytes());
    if !hb.wants.is_empty() {
        write_varint(out, hb.wants.len() as u64);
        for h in &hb.wants {
            out.extend_from_slice(&h.to_le_bytes());
        }
    }
    if count > 0 {
        write_varint(out, count);
        out.extend_from_slice(&entries);
    }
}

/// Decodes a protocol message of at most `max_message_bytes`.
pub(crate) fn decode<M: Meta>(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<Envelope<M>, WireError> {
    let (mut r, kind) = wire::open(bytes, max_message_bytes)?;
    let sender = if r.peek_byte()? == 0 {
        r.byte()?;
        None
    } else {
        Some(read_id(&mut r)?)
    };
    let message = match kind {
        HEARTBEAT => Message::Heartbeat(read_heartbeat(&mut r)?),
        INTERVAL => {
            let from = counter(&mut r)?;
            let to = counter(&mut r)?;
            let delta = delta::read(&mut r)?;
            Message::Interval { from, to, delta }
        }
        REQUEST => {
            let batch = r.varint()?;
            // An item takes at least four bytes.
            let items = read_list(&mut r, 4, |r| Ok((read_id(r)?, counter(r)?)))?;
            Message::CatchUpRequest { batch, items }
        }
        REPLY => Message::CatchUpReply(ReplyChunk {
            batch: r.varint()?,
            total: r.varint()?,
            offset: r.varint()?,
            bytes: r.rest().to_vec(),
        }),
        other => return Err(WireError::UnknownKind(other)),
    };
    wire::finish(&r, Envelope { sender, message })
}

fn read_heartbeat(r: &mut Reader<'_>) -> Result<Heartbeat, WireError> {
    let flags = r.byte()?;
    if flags >= 32 {
        return Err(WireError::Malformed("unknown heartbeat flags"));
    }
    let beat = counter(r)?;
    let own = counter(r)?;
    let view = u32::from_le_bytes(read4(r)?);
    let wants = if flags & WANTS != 0 {
        read_list(r, 4, |r| Ok(u32::from_le_bytes(read4(r)?)))?
    } else {
        Vec::new()
    };
    let entries = if flags & ENTRIES != 0 {
        // An entry takes at least seven bytes.
        read_list(r, 7, read_entry)?
    } else {
        Vec::new()
    };
    Ok(Heartbeat {
        beat,
        counter: own,
        leaving: flags & LEAVING != 0,
        digest: flags & DIGEST != 0,
        answer: flags & ANSWER != 0,
        view,
        wants,
        entries,
    })
}

fn read_entry(r: &mut Reader<'_>) -> Result<DigestEntry, WireError> {
    let tag = r.varint()?;
    let id = if tag & 1 == 1 {
        EntryId::Full(read_id(r)?)
    } else {
        EntryId::Hash(u32::from_le_bytes(read4(r)?))
    };
    let state = match tag >> 1 {
        0 => EntryState::NotAhead,
        1 => EntryState::Dead,
        s if s - 2 <= MAX_COUNTER => EntryState::Counter(s - 2),
        _ => return Err(WireError::Malformed("counter above 2^53")),
    };
    Ok(DigestEntry {
        id,
        beat: counter(r)?,
        age_ms: r.varint()?,
        state,
    })
}

/// A count, then that many items of at least `min_bytes` each: a count
/// the rest of the input cannot hold is refused before anything is
/// reserved.
fn read_list<T>(
    r: &mut Reader<'_>,
    min_bytes: usize,
    mut item: impl FnMut(&mut Reader<'_>) -> Result<T, WireError>,
) -> Result<Vec<T>, WireError> {
    let count = r.varint()?;
    if count > (r.remaining() / min_bytes) as u64 {
        return Err(WireError::Truncated);
    }
    (0..count).map(|_| item(r)).collect()
}

fn read4(r: &mut Reader<'_>) -> Result<[u8; 4], WireError> {
    let b = r.take(4)?;
    Ok([b[0], b[1], b[2], b[3]])
}

fn write_id(out: &mut Vec<u8>, id: &ReplicaId) {
    let name = id.name().as_str().as_bytes();
    // Names are 1 to 255 bytes: `ReplicaName` checks it, and a zero length
    // byte stands for the implied sender.
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
