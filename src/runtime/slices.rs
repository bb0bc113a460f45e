//! Reading every state a shard shows a slice per hold of its lock, for the
//! readers that must not hold it for long (a large topic's list, the first
//! key counts), while changes go on.
//!
//! A reader names where it stands in a state by a cursor of its own (an
//! entry slot, a member position) and reads one slice per hold. A state
//! replaced whole between holds (a large change, a re-incarnation; told by
//! its generation) is read again from the start; a peer hidden or gone
//! between holds is left, since its presences left with leaves that the
//! reader replays.

use super::shard::{Inner, Shard};
use crate::{Meta, ReplicaId, State};

/// A state of a shard: this replica's, or a shown peer's.
enum Source {
    Own,
    Peer(ReplicaId),
}

impl<M: Meta> Inner<M> {
    /// The states shown now, with their generations.
    fn sources(&self) -> Vec<(Source, u64)> {
        let peers = self.peers.iter().filter(|(_, p)| p.shown);
        std::iter::once((Source::Own, self.own_generation))
            .chain(peers.map(|(r, p)| (Source::Peer(r.clone()), p.generation)))
            .collect()
    }

    /// A source's state now and its generation, if it is still shown.
    fn source(&self, source: &Source) -> Option<(u64, &State<M>)> {
        match source {
            Source::Own => Some((self.own_generation, &self.own)),
            Source::Peer(replica) => {
                let peer = self.peers.get(replica).filter(|p| p.shown)?;
                Some((peer.generation, &*peer.data))
            }
        }
    }
}

impl<M: Meta> Shard<M> {
    /// Reads every state shown now, one slice per hold: `read_slice` adds
    /// what one state holds from a cursor on (`None`: its start) to `out`,
    /// and returns the cursor to go on from, or `None` past its end. Room
    /// for `slice` more items is made before each hold, so that the vector
    /// never grows under the lock. See the module docs.
    pub(crate) fn read_in_slices<T>(
        &self,
        slice: usize,
        mut read_slice: impl FnMut(&State<M>, Option<usize>, &mut Vec<T>) -> Option<usize>,
    ) -> Vec<T> {
        let sources = self.lock().sources();
        let mut read = Vec::new();
        for (source, mut generation) in sources {
            let mut from_source = Vec::new();
            let mut cursor = None;
            loop {
                from_source.reserve(slice);
                let s = self.lock();
                let Some((now, state)) = s.source(&source) else {
                    break;
                };
                if now != generation {
                    (generation, cursor) = (now, None);
                    from_source.clear();
                    continue;
                }
                cursor = read_slice(state, cursor, &mut from_source);
                if cursor.is_none() {
                    break;
                }
            }
            read.append(&mut from_source);
        }
        read
    }
}
