//! Raw protocol bytes, laid out as `src/protocol/codec.rs` documents: what a
//! hostile member sends over its own authenticated link.

#![allow(dead_code)] // Each user takes part of it.

use attendance::ReplicaId;

pub const HEARTBEAT: u8 = 2;
pub const INTERVAL: u8 = 3;
pub const REQUEST: u8 = 4;
pub const REPLY: u8 = 5;

pub fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn id(out: &mut Vec<u8>, id: &ReplicaId) {
    let name = id.name().as_str().as_bytes();
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    varint(out, id.incarnation().started_ms());
    varint(out, u64::from(id.incarnation().nonce()));
}

pub fn message(kind: u8, sender: &ReplicaId) -> Vec<u8> {
    let mut out = vec![attendance::wire::VERSION, kind];
    id(&mut out, sender);
    out
}

/// A heartbeat from `sender` with entries `(id, state, beat, age)`,
/// state as on the wire: 0 not ahead, 1 dead, counter + 2.
pub fn heartbeat(sender: &ReplicaId, beat: u64, entries: &[(ReplicaId, u64, u64, u64)]) -> Vec<u8> {
    let mut out = message(HEARTBEAT, sender);
    out.push(if entries.is_empty() { 0 } else { 16 });
    varint(&mut out, beat);
    varint(&mut out, 0);
    out.extend_from_slice(&0u32.to_le_bytes());
    if !entries.is_empty() {
        varint(&mut out, entries.len() as u64);
    }
    for (entry, state, beat, age) in entries {
        varint(&mut out, state * 2 + 1);
        id(&mut out, entry);
        varint(&mut out, *beat);
        varint(&mut out, *age);
    }
    out
}

/// The graceful-leave heartbeat of `sender`, named in full.
pub fn leave(sender: &ReplicaId) -> Vec<u8> {
    let mut out = message(HEARTBEAT, sender);
    out.push(1);
    varint(&mut out, 1);
    varint(&mut out, 0);
    out.extend_from_slice(&0u32.to_le_bytes());
    out
}

/// An interval `(from, to]` of the sender's with no entries.
pub fn empty_interval(sender: &ReplicaId, from: u64, to: u64) -> Vec<u8> {
    let mut out = message(INTERVAL, sender);
    varint(&mut out, from);
    varint(&mut out, to);
    out.push(0x90); // a MessagePack array of no parts
    out
}

/// A catch-up request numbered 0 for one replica.
pub fn request(sender: &ReplicaId, replica: &ReplicaId, since: u64) -> Vec<u8> {
    let mut out = message(REQUEST, sender);
    varint(&mut out, 0);
    varint(&mut out, 1);
    id(&mut out, replica);
    varint(&mut out, since);
    out
}

/// A piece of the answer to request `batch`.
pub fn reply_piece(
    sender: &ReplicaId,
    (batch, total, offset): (u64, u64, u64),
    bytes: &[u8],
) -> Vec<u8> {
    let mut out = message(REPLY, sender);
    for n in [batch, total, offset] {
        varint(&mut out, n);
    }
    out.extend_from_slice(bytes);
    out
}
