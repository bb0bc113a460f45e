//! Stable references to versions of presences, the same on every replica.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ReplicaId;

/// A reference to one version of one presence: the same text on every
/// replica that shows that version, and a different one for every other
/// version of any presence.
///
/// It names the dot of the version (the owning replica and its counter), so
/// a client that reconnects to another replica finds the same references
/// there for what did not change, which is what Phoenix's `phx_ref` needs.
/// Its text is 32 lowercase hex digits: a 64-bit hash of the owning
/// replica's name and incarnation, then the version's counter.
///
/// ```
/// use attendance::{Incarnation, ReplicaId, ReplicaName, VersionRef};
/// let a = ReplicaId::new(ReplicaName::new("a")?, Incarnation::new(1, 2));
/// let r = VersionRef::new(&a, 7);
/// assert_eq!(r.to_string().len(), 32);
/// assert_eq!(r.to_string().parse::<VersionRef>()?, r);
/// assert_ne!(r, VersionRef::new(&a, 8));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionRef {
    replica: u64,
    version: u64,
}

impl VersionRef {
    /// The reference of version `version` of a presence owned by `replica`.
    pub fn new(replica: &ReplicaId, version: u64) -> Self {
        let incarnation = replica.incarnation();
        let mut hash = Fnv1a::default();
        hash.write(replica.name().as_str().as_bytes());
        // The name's length ends it, so no two (name, incarnation) pairs
        // write the same bytes.
        hash.write(&(replica.name().as_str().len() as u64).to_le_bytes());
        hash.write(&incarnation.started_ms().to_le_bytes());
        hash.write(&incarnation.nonce().to_le_bytes());
        Self {
            replica: hash.0,
            version,
        }
    }
}

/// FNV-1a, 64 bits: written out because the text must be the same in
/// every build and on every platform, which std's hashers do not promise.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.replica, self.version)
    }
}

impl fmt::Debug for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VersionRef({self})")
    }
}

/// Text that is not a [`VersionRef`]: not 32 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a version reference is 32 hex digits")]
pub struct ParseVersionRefError;

impl FromStr for VersionRef {
    type Err = ParseVersionRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex = |part: &str| u64::from_str_radix(part, 16).map_err(|_| ParseVersionRefError);
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseVersionRefError);
        }
        Ok(Self {
            replica: hex(&text[..16])?,
            version: hex(&text[16..])?,
        })
    }
}

impl Serialize for VersionRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VersionRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::VersionRef;
    use crate::{Incarnation, ReplicaId, ReplicaName};

    fn replica(name: &str, started_ms: u64, nonce: u32) -> ReplicaId {
        ReplicaId::new(
            ReplicaName::new(name).unwrap(),
            Incarnation::new(started_ms, nonce),
        )
    }

    #[test]
    fn the_text_is_fixed_across_builds() {
        // Replicas of different builds must agree on it (checked against an
        // independent FNV-1a).
        let r = VersionRef::new(&replica("node-1", 1_700_000_000_000, 0xdead_beef), 42);
        assert_eq!(r.to_string(), "0389cef17f99be37000000000000002a");
    }

    #[test]
    fn replicas_and_incarnations_get_different_references() {
        let refs = [
            VersionRef::new(&replica("a", 1, 1), 1),
            VersionRef::new(&replica("a", 1, 2), 1),
            VersionRef::new(&replica("a", 2, 1), 1),
            VersionRef::new(&replica("b", 1, 1), 1),
            VersionRef::new(&replica("a", 1, 1), 2),
        ];
        for (i, a) in refs.iter().enumerate() {
            for b in &refs[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn bad_text_is_refused() {
        for text in [
            "",
            "xyz",
            &"0".repeat(31),
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert!(text.parse::<VersionRef>().is_err(), "{text:?}");
        }
    }
}
