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

/// The newest format version this build writes and reads.
pub const VERSION: u8 = 2;

/// The oldest format version this build reads, and writes to a peer that
/// reads no newer one. See `docs/protocol.md` ("Versions") for how long an
/// old version stays readable.
pub const MIN_VERSION: u8 = 2;

/// A range of format versions: those a build reads, and among which it
/// writes the highest its peer reads too ([`Versions::negotiate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Versions {
    min: u8,
    max: u8,
}

impl Versions {
    /// What this build reads: [`MIN_VERSION`] to [`VERSION`].
    pub const SUPPORTED: Versions = Versions {
        min: MIN_VERSION,
        max: VERSION,
    };

    /// `min` to `max`, both included; `None` if `min` exceeds `max`.
    pub const fn new(min: u8, max: u8) -> Option<Self> {
        if min > max {
            None
        } else {
            Some(Self { min, max })
        }
    }

    /// The oldest version of the range.
    pub const fn min(self) -> u8 {
        self.min
    }

    /// The newest version of the range.
    pub const fn max(self) -> u8 {
        self.max
    }

    /// Whether `version` is in the range.
    pub const fn contains(self, version: u8) -> bool {
        self.min <= version && version <= self.max
    }

    /// The version two builds speak to each other: the highest both read.
    /// Both sides compute the same one from the two ranges.
    ///
    /// # Errors
    ///
    /// [`WireError::NoCommonVersion`] when the ranges do not overlap.
    pub fn negotiate(self, peer: Versions) -> Result<u8, WireError> {
        let highest = self.max.min(peer.max);
        if highest >= self.min.max(peer.min) {
            Ok(highest)
        } else {
            Err(WireError::NoCommonVersion {
                ours: self,
                theirs: peer,
            })
        }
    }
}

impl std::fmt::Display for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.max)
        } else {
            write!(f, "{} to {}", self.min, self.max)
        }
    }
}

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
    /// A peer reads no format version this build writes: a build too old
    /// or too new to share a cluster with this one.
    #[error("no common format version: this build reads {ours}, the peer {theirs}")]
    NoCommonVersion {
        /// The versions this build reads.
        ours: Versions,
        /// The versions the peer reads.
        theirs: Versions,
    },
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
    if !Versions::SUPPORTED.contains(version) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn range(min: u8, max: u8) -> Versions {
        Versions::new(min, max).unwrap()
    }

    #[test]
    fn negotiation_picks_the_highest_common_version_on_both_sides() {
        let cases = [
            (range(2, 2), range(2, 2), Some(2)),
            (range(2, 2), range(2, 3), Some(2)),
            (range(2, 3), range(3, 4), Some(3)),
            (range(2, 4), range(3, 3), Some(3)),
            (range(2, 2), range(3, 4), None),
            (range(2, 2), range(4, 4), None),
        ];
        for (a, b, expected) in cases {
            assert_eq!(a.negotiate(b).ok(), expected, "{a} with {b}");
            assert_eq!(b.negotiate(a).ok(), expected, "{b} with {a}");
        }
        assert_eq!(
            range(2, 2).negotiate(range(4, 4)),
            Err(WireError::NoCommonVersion {
                ours: range(2, 2),
                theirs: range(4, 4)
            })
        );
        assert_eq!(Versions::new(3, 2), None);
    }

    #[test]
    fn every_supported_version_is_read_and_no_other() {
        for version in 0..=u8::MAX {
            let bytes = [version, Kind::Delta as u8];
            match open(&bytes, DEFAULT_MAX_MESSAGE_BYTES) {
                Ok(_) => assert!(Versions::SUPPORTED.contains(version)),
                Err(e) => {
                    assert!(!Versions::SUPPORTED.contains(version));
                    assert_eq!(e, WireError::UnknownVersion(version));
                }
            }
        }
    }
}
