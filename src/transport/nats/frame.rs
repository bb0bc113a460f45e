//! The frame around every protocol message on NATS: who sent it, its
//! sequence number, the pieces of a message larger than the server's
//! `max_payload`, and the MAC. The layout is in the module docs.

use bytes::{BufMut, Bytes, BytesMut};
use hmac::Mac;

use super::subject::Stream;
use crate::transport::tcp::TAG_LEN;
use crate::{Incarnation, ReplicaId, ReplicaName};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The frame format's version.
pub(crate) const FRAME_VERSION: u8 = 1;

const TAGGED: u8 = 1;
const FRAGMENT: u8 = 2;
const PROBE: u8 = 4;
const KNOWN_FLAGS: u8 = TAGGED | FRAGMENT | PROBE;

const LABEL_KEY: &[u8] = b"attn-nats\0";
/// Bytes of a fragment's fields: index, count, total.
const FRAGMENT_LEN: usize = 2 + 2 + 4;

/// The MAC key of a cluster secret: `HMAC-SHA256(secret, "attn-nats\0")`,
/// apart from the keys the TCP mesh derives from the same secret.
pub(crate) fn derive_key(secret: &[u8]) -> Option<HmacSha256> {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).ok()?;
    mac.update(LABEL_KEY);
    let key = mac.finalize().into_bytes();
    <HmacSha256 as Mac>::new_from_slice(&key).ok()
}

fn tag(key: &HmacSha256, subject: &str, frame: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = key.clone();
    mac.update(subject.as_bytes());
    mac.update(&[0]);
    mac.update(frame);
    let full = mac.finalize().into_bytes();
    let mut out = [0; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Too short, an unknown version or flag, a field out of range.
    Malformed,
    /// No tag where this replica checks one, or one where it does not:
    /// the two replicas disagree on the cluster secret being set.
    TagMismatch,
    /// The tag does not verify: another secret, or altered on the way.
    BadTag,
}

/// A message's place among the frames it was cut into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) index: u16,
    pub(crate) count: u16,
    /// The whole message's length.
    pub(crate) total: u32,
}

/// A frame that parsed and, with a secret, verified.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) sender: ReplicaId,
    pub(crate) seq: u64,
    pub(crate) piece: Option<Piece>,
    pub(crate) probe: bool,
    pub(crate) payload: &'a [u8],
}

/// Writes this replica's frames: one sequence per stream.
pub(crate) struct Framer {
    sender: Vec<u8>,
    key: Option<HmacSha256>,
    seqs: [u64; 3],
}

impl Framer {
    pub(crate) fn new(me: &ReplicaId, key: Option<HmacSha256>) -> Self {
        let mut sender = Vec::with_capacity(13 + me.name().as_str().len());
        write_id(&mut sender, me);
        Self {
            sender,
            key,
            seqs: [0; 3],
        }
    }

    /// The frames carrying `payload` on `subject`, each at most
    /// `max_frame` bytes: one frame, or pieces when it does not fit.
    /// `None` when even pieces cannot carry it (more than 65,535 of them,
    /// or a header that leaves no room).
    pub(crate) fn frames(
        &mut self,
        stream: Stream,
        subject: &str,
        probe: bool,
        payload: &[u8],
        max_frame: usize,
    ) -> Option<Vec<Bytes>> {
        let tag_len = if self.key.is_some() { TAG_LEN } else { 0 };
        let header = 2 + self.sender.len() + 8 + tag_len;
        if header + payload.len() <= max_frame {
            let frame = self.frame(stream, subject, probe, None, payload);
            return Some(vec![frame]);
        }
        let room = max_frame.checked_sub(header + FRAGMENT_LEN)?;
        if room == 0 {
            return None;
        }
        let count = u16::try_from(payload.len().div_ceil(room)).ok()?;
        let total = u32::try_from(payload.len()).ok()?;
        let frames = payload
            .chunks(room)
            .zip(0..)
            .map(|(chunk, index)| {
                let piece = Piece {
                    index,
                    count,
                    total,
                };
                self.frame(stream, subject, probe, Some(piece), chunk)
            })
            .collect();
        Some(frames)
    }

    fn frame(
        &mut self,
        stream: Stream,
        subject: &str,
        probe: bool,
        piece: Option<Piece>,
        payload: &[u8],
    ) -> Bytes {
        let seq = &mut self.seqs[stream.index()];
        *seq += 1;
        let mut flags = 0;
        for (set, bit) in [
            (self.key.is_some(), TAGGED),
            (piece.is_some(), FRAGMENT),
            (probe, PROBE),
        ] {
            if set {
                flags |= bit;
            }
        }
        let mut out = BytesMut::with_capacity(64 + self.sender.len() + payload.len());
        out.put_u8(FRAME_VERSION);
        out.put_u8(flags);
        out.put_slice(&self.sender);
        out.put_u64(*seq);
        if let Some(p) = piece {
            out.put_u16(p.index);
            out.put_u16(p.count);
            out.put_u32(p.total);
        }
        out.put_slice(payload);
        if let Some(key) = &self.key {
            let t = tag(key, subject, &out);
            out.put_slice(&t);
        }
        out.freeze()
    }
}

/// Reads frames, checking tags with `key` when a secret is set.
pub(crate) fn open<'a>(
    key: Option<&HmacSha256>,
    subject: &str,
    bytes: &'a [u8],
) -> Result<Frame<'a>, FrameError> {
    let mut r = Reader(bytes);
    if r.u8()? != FRAME_VERSION {
        return Err(FrameError::Malformed);
    }
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FrameError::Malformed);
    }
    let body = match (flags & TAGGED != 0, key) {
        (true, Some(key)) => {
            let split = bytes
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(FrameError::Malformed)?;
            let (body, received) = bytes.split_at(split);
            let mut mac = key.clone();
            mac.update(subject.as_bytes());
            mac.update(&[0]);
            mac.update(body);
            // Constant-time comparison of the truncated tag.
            mac.verify_truncated_left(received)
                .map_err(|_| FrameError::BadTag)?;
            body
        }
        (false, None) => bytes,
        _ => return Err(FrameError::TagMismatch),
    };
    let mut r = Reader(body);
    r.take(2)?;
    let sender = read_id(&mut r)?;
    let seq = r.u64()?;
    let piece = if flags & FRAGMENT != 0 {
        let piece = Piece {
            index: r.u16()?,
            count: r.u16()?,
            total: r.u32()?,
        };
        if piece.count < 2 || piece.index >= piece.count {
            return Err(FrameError::Malformed);
        }
        Some(piece)
    } else {
        None
    };
    Ok(Frame {
        sender,
        seq,
        piece,
        probe: flags & PROBE != 0,
        payload: r.0,
    })
}

/// A replica id as the TCP mesh's handshake writes it:
/// `name length (u8) ‖ name ‖ started_ms (u64 BE) ‖ nonce (u32 BE)`.
fn write_id(out: &mut Vec<u8>, id: &ReplicaId) {
    let name = id.name().as_str().as_bytes();
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.extend_from_slice(&id.incarnation().started_ms().to_be_bytes());
    out.extend_from_slice(&id.incarnation().nonce().to_be_bytes());
}

fn read_id(r: &mut Reader<'_>) -> Result<ReplicaId, FrameError> {
    let len = usize::from(r.u8()?);
    let name = std::str::from_utf8(r.take(len)?).map_err(|_| FrameError::Malformed)?;
    let name = ReplicaName::new(name).map_err(|_| FrameError::Malformed)?;
    let started = r.u64()?;
    let nonce = r.u32()?;
    Ok(ReplicaId::new(name, Incarnation::new(started, nonce)))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// A message arriving in pieces from one sender on one stream. NATS keeps
/// one publisher's order, so the pieces come one after the other with
/// consecutive sequence numbers; a gap abandons the message (the protocol
/// asks again for what it misses).
#[derive(Debug)]
pub(crate) struct Assembly {
    count: u16,
    next_index: u16,
    next_seq: u64,
    total: usize,
    buf: Vec<u8>,
}

/// What a piece did to its sender's assembly.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Assembled {
    /// The message is whole.
    Done(Vec<u8>),
    /// More pieces are awaited.
    Pending,
    /// The piece does not continue the assembly, or breaks a limit: what
    /// was held is dropped.
    Dropped,
}

impl Assembly {
    /// Adds a piece to `slot`, starting an assembly with a first piece.
    /// `held` counts the bytes all assemblies hold; none may take it past
    /// `budget`, nor announce a message over `max_message`.
    pub(crate) fn add(
        slot: &mut Option<Assembly>,
        seq: u64,
        piece: Piece,
        data: &[u8],
        limits: (usize, usize),
        held: &mut usize,
    ) -> Assembled {
        let (max_message, budget) = limits;
        let total = usize::try_from(piece.total).unwrap_or(usize::MAX);
        if piece.index == 0 {
            if let Some(old) = slot.take() {
                *held -= old.buf.len();
            }
            if total > max_message || total < usize::from(piece.count) {
                return Assembled::Dropped;
            }
            *slot = Some(Assembly {
                count: piece.count,
                next_index: 0,
                next_seq: seq,
                total,
                buf: Vec::new(),
            });
        }
        let Some(a) = slot.as_mut() else {
            return Assembled::Dropped;
        };
        let fits = a.buf.len() + data.len() <= a.total && *held + data.len() <= budget;
        if piece.index != a.next_index
            || piece.count != a.count
            || total != a.total
            || seq != a.next_seq
            || !fits
        {
            if let Some(old) = slot.take() {
                *held -= old.buf.len();
            }
            return Assembled::Dropped;
        }
        a.buf.extend_from_slice(data);
        *held += data.len();
        a.next_index += 1;
        a.next_seq += 1;
        if a.next_index < a.count {
            return Assembled::Pending;
        }
        let done = slot.take().map(|a| a.buf).unwrap_or_default();
        *held -= done.len();
        if done.len() == total {
            Assembled::Done(done)
        } else {
            Assembled::Dropped
        }
    }

    /// The bytes an abandoned assembly gives back.
    pub(crate) fn held(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ReplicaId {
        ReplicaId::new(ReplicaName::new(name).unwrap(), Incarnation::new(5, 9))
    }

    fn key() -> Option<HmacSha256> {
        derive_key(b"a cluster secret of at least 32 bytes!")
    }

    #[test]
    fn a_frame_round_trips_with_its_tag() {
        let mut framer = Framer::new(&id("a"), key());
        let frames = framer
            .frames(Stream::Broadcast, "s.c.bcast.a", false, b"hello", 1 << 20)
            .unwrap();
        assert_eq!(frames.len(), 1);
        let f = open(key().as_ref(), "s.c.bcast.a", &frames[0]).unwrap();
        assert_eq!(f.sender, id("a"));
        assert_eq!(f.seq, 1);
        assert_eq!(f.payload, b"hello");
        assert_eq!(f.piece, None);
    }

    #[test]
    fn a_tag_binds_the_subject_the_secret_and_every_byte() {
        let mut framer = Framer::new(&id("a"), key());
        let frame = framer
            .frames(Stream::Broadcast, "s.c.bcast.a", false, b"hello", 1 << 20)
            .unwrap()
            .remove(0);
        assert_eq!(
            open(key().as_ref(), "s.c.bcast.b", &frame).unwrap_err(),
            FrameError::BadTag
        );
        let other = derive_key(b"another cluster secret of 32 bytes....");
        assert_eq!(
            open(other.as_ref(), "s.c.bcast.a", &frame).unwrap_err(),
            FrameError::BadTag
        );
        assert_eq!(
            open(None, "s.c.bcast.a", &frame).unwrap_err(),
            FrameError::TagMismatch
        );
        for i in 0..frame.len() {
            let mut bad = frame.to_vec();
            bad[i] ^= 0x40;
            assert!(
                open(key().as_ref(), "s.c.bcast.a", &bad).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn untagged_frames_are_refused_where_a_secret_is_set() {
        let mut framer = Framer::new(&id("a"), None);
        let frame = framer
            .frames(Stream::Broadcast, "x", false, b"hi", 1 << 20)
            .unwrap()
            .remove(0);
        assert!(open(None, "x", &frame).is_ok());
        assert_eq!(
            open(key().as_ref(), "x", &frame).unwrap_err(),
            FrameError::TagMismatch
        );
    }

    #[test]
    fn a_large_message_goes_in_pieces_and_comes_back_whole() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut framer = Framer::new(&id("a"), key());
        let frames = framer
            .frames(Stream::Inbox, "x", false, &payload, 1000)
            .unwrap();
        assert!(frames.len() > 10);
        assert!(frames.iter().all(|f| f.len() <= 1000));
        let (mut slot, mut held) = (None, 0);
        let mut out = None;
        for frame in &frames {
            let f = open(key().as_ref(), "x", frame).unwrap();
            match Assembly::add(
                &mut slot,
                f.seq,
                f.piece.unwrap(),
                f.payload,
                (1 << 20, 1 << 20),
                &mut held,
            ) {
                Assembled::Done(whole) => out = Some(whole),
                Assembled::Pending => {}
                Assembled::Dropped => panic!("dropped"),
            }
        }
        assert_eq!(out.as_deref(), Some(&payload[..]));
        assert_eq!(held, 0);
    }

    #[test]
    fn a_missing_piece_drops_the_message_and_frees_its_bytes() {
        let payload = vec![7u8; 5000];
        let mut framer = Framer::new(&id("a"), None);
        let frames = framer
            .frames(Stream::Broadcast, "x", false, &payload, 1000)
            .unwrap();
        let (mut slot, mut held) = (None, 0);
        let limits = (1 << 20, 1 << 20);
        let mut results = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            if i == 2 {
                continue;
            }
            let f = open(None, "x", frame).unwrap();
            results.push(Assembly::add(
                &mut slot,
                f.seq,
                f.piece.unwrap(),
                f.payload,
                limits,
                &mut held,
            ));
        }
        assert!(results.contains(&Assembled::Dropped));
        assert!(!results.iter().any(|r| matches!(r, Assembled::Done(_))));
        assert_eq!(held, 0);
    }

    #[test]
    fn pieces_announcing_more_than_the_limits_are_refused() {
        let (mut slot, mut held) = (None, 0);
        let piece = Piece {
            index: 0,
            count: 2,
            total: 2_000_000,
        };
        assert_eq!(
            Assembly::add(&mut slot, 1, piece, &[0; 10], (1 << 20, 1 << 30), &mut held),
            Assembled::Dropped
        );
        let piece = Piece {
            index: 0,
            count: 2,
            total: 100,
        };
        assert_eq!(
            Assembly::add(&mut slot, 1, piece, &[0; 50], (1 << 20, 10), &mut held),
            Assembled::Dropped
        );
        assert_eq!(held, 0);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let mut framer = Framer::new(&id("abc"), key());
        let frame = framer
            .frames(Stream::Broadcast, "x", true, b"payload", 1 << 20)
            .unwrap()
            .remove(0);
        for len in 0..frame.len() {
            let _ = open(key().as_ref(), "x", &frame[..len]);
            let _ = open(None, "x", &frame[..len]);
        }
        assert_eq!(open(None, "x", &[2, 0]).unwrap_err(), FrameError::Malformed);
        assert_eq!(
            open(None, "x", &[1, 0x80]).unwrap_err(),
            FrameError::Malformed
        );
    }
}
