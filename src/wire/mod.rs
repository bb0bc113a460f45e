//! The wire format: deltas as bytes, and bytes back as deltas or errors.
//!
//! A message is two header bytes, the format [`VERSION`] and the message
//! kind, then a MessagePack body. Metas are encoded with `rmp-serde` in its
//! compact form (structs as arrays); everything around them is laid out by
//! hand so that a join costs a few bytes beyond its topic, key and meta:
//! counters are sent as differences from a base, topics once per message,
//! and a part's context is left implicit when its entries and removals
//! already spell it out. The layout is described at the top of
//! `src/wire/delta.rs`.
//!
//! Decoding never panics and never allocates more than the input justifies.
//! A meta that does not decode (another version of the application) drops
//! only its entry: the entry's counter still advances the context, and the
//! receiving merge reports it in [`Diff::undecodable`](crate::Diff::undecodable).
//!
//! ```
//! use attendance::{wire, Incarnation, ReplicaId, ReplicaName, State};
//!
//! let id = ReplicaId::new(ReplicaName::new("a").unwrap(), Incarnation::new(1, 2));
//! let mut state: State<String> = State::new(id);
//! let (_, change) = state.track("room:1", "alice", "web".into()).unwrap();
//! let bytes = wire::encode(change.delta()).unwrap();
//! let delta = wire::decode::<String>(&bytes).unwrap();
//! assert_eq!(&delta, change.delta());
//! assert!(wire::decode::<String>(&bytes[..bytes.len() - 1]).is_err());
//! ```

pub(crate) mod delta;
pub(crate) mod msgpack;

use crate::state::{Delta, Meta};

/// The format version this build writes and reads.
pub const VERSION: u8 = 2;

/// The largest message [`decode`] accepts: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Message kinds, the second header byte. The protocol's own messages
/// take the kinds above this one (`src/protocol/codec.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Delta = 1,
}

/// Why bytes could not be decoded, or a delta encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message is longer than the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// The message length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The message ends before its content does.
    #[error("message is truncated")]
    Truncated,
    /// The message was written by an unknown format version.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// The message is of a kind this build does not know.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The message breaks the format.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// Bytes follow the end of the message.
    #[error("{0} bytes follow the end of the message")]
    TrailingBytes(usize),
    /// A meta could not be encoded.
    #[error("meta cannot be encoded: {0}")]
    MetaEncoding(String),
    /// A string or list is too long for the format.
    #[error("a string or list is too long to encode")]
    TooLarge,
}

/// Encodes a delta (or a whole state, from [`State::snapshot`](crate::State::snapshot)).
///
/// Equal deltas encode to equal bytes.
pub fn encode<M: Meta>(delta: &Delta<M>) -> Result<Vec<u8>, WireError> {
    let mut out = vec![VERSION, Kind::Delta as u8];
    delta::write(&mut out, delta)?;
    Ok(out)
}

/// Decodes a delta, refusing messages over [`DEFAULT_MAX_MESSAGE_BYTES`].
pub fn decode<M: Meta>(bytes: &[u8]) -> Result<Delta<M>, WireError> {
    decode_with_limit(bytes, DEFAULT_MAX_MESSAGE_BYTES)
}

/// Decodes a delta, refusing messages over `max_message_bytes`.
pub fn decode_with_limit<M: Meta>(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<Delta<M>, WireError> {
    let (mut reader, kind) = open(bytes, max_message_bytes)?;
    if kind != Kind::Delta as u8 {
        return Err(WireError::UnknownKind(kind));
    }
    let delta = delta::read(&mut reader)?;
    finish(&reader, delta)
}

/// Checks a message's size and version; a reader past the header, and the
/// message kind.
pub(crate) fn open(
    bytes: &[u8],
    max_message_bytes: usize,
) -> Result<(msgpack::Reader<'_>, u8), WireError> {
    if bytes.len() > max_message_bytes {
        return Err(WireError::Oversized {
            len: bytes.len(),
            max: max_message_bytes,
        });
    }
    let mut reader = msgpack::Reader::new(bytes);
    let version = reader.byte()?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let kind = reader.byte()?;
    Ok((reader, kind))
}

/// `value`, if the message ended with it.
pub(crate) fn finish<T>(reader: &msgpack::Reader<'_>, value: T) -> Result<T, WireError> {
    match reader.remaining() {
        0 => Ok(value),
        n => Err(WireError::TrailingBytes(n)),
    }
}
