//! The handshake that authenticates a fresh connection both ways, and the
//! session it yields.

use std::io;
use std::net::SocketAddr;
use std::sync::PoisonError;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hmac::Mac;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::frame::{FrameMac, codec, is_oversized};
use super::keyring::{KeyId, Keyring};
use super::stats::bump;
use super::{HmacSha256, Shared};
use crate::wire;
use crate::{Incarnation, ReplicaId, ReplicaName};

pub(super) const MAGIC: &[u8; 4] = b"attn";
pub(super) const CHALLENGE_LEN: usize = 32;
const KEY_ID_LEN: usize = 8;
/// The magic, the newest and the oldest format version read.
const HELLO_HEAD: usize = MAGIC.len() + 2;
pub(super) const HELLO_LEN: usize = HELLO_HEAD + CHALLENGE_LEN + KEY_ID_LEN;
const MAC_LEN: usize = 32;
/// Room for the largest auth frame (1 + 255 + 12 + 32 bytes).
const HANDSHAKE_MAX_FRAME: usize = 512;

const LABEL_DIALER: &[u8] = b"attn-dialer\0";
const LABEL_ACCEPTOR: &[u8] = b"attn-acceptor\0";
const LABEL_SESSION: &[u8] = b"attn-session\0";
const DIRECTION_FROM_DIALER: u8 = 0;
const DIRECTION_FROM_ACCEPTOR: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Dialer,
    Acceptor,
}

#[derive(Debug)]
pub(super) enum HandshakeError {
    Io(io::Error),
    /// The other side closed the connection.
    Closed,
    /// The other side closed the connection after this dialer's MAC.
    Rejected,
    Oversized,
    Malformed(&'static str),
    /// The two builds read no common format version.
    Version(wire::WireError),
    BadMac,
    /// The dialer named a secret this replica does not hold.
    UnknownKey(KeyId),
    /// The TLS handshake failed.
    #[cfg(feature = "tls")]
    Tls(io::Error),
    /// The peer's certificate does not name the replica it claimed.
    NameNotCertified,
    /// The other side is this replica.
    SelfConnection,
    Timeout,
    Busy,
    Random(getrandom::Error),
}

impl From<io::Error> for HandshakeError {
    fn from(error: io::Error) -> Self {
        if is_oversized(&error) {
            Self::Oversized
        } else {
            Self::Io(error)
        }
    }
}

/// Counts a connection that did not authenticate, and logs it unless too
/// many came within the second (a flood must not flood the logs too).
pub(super) fn refused(shared: &Shared, addr: SocketAddr, role: Role, error: &HandshakeError) {
    let counters = &shared.counters;
    bump(&counters.handshakes_refused);
    match error {
        HandshakeError::Busy => bump(&counters.handshakes_busy),
        HandshakeError::UnknownKey(_) => bump(&counters.unknown_keys),
        HandshakeError::NameNotCertified => bump(&counters.names_not_certified),
        _ => {}
    }
    let (log, unlogged) = shared
        .refusal_log
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if unlogged > 0 {
        tracing::warn!(
            unlogged,
            "refused connections not logged in the last second"
        );
    }
    if !log {
        bump(&counters.refusals_not_logged);
        return;
    }
    match error {
        HandshakeError::BadMac => {
            bump(&counters.auth_failures);
            tracing::warn!(%addr, ?role, "handshake refused: authentication failed (another cluster secret?)");
        }
        HandshakeError::UnknownKey(key) => {
            tracing::warn!(%addr, ?role, %key, "handshake refused: the dialer's secret is not in the keyring");
        }
        HandshakeError::Version(error) => {
            bump(&counters.version_mismatches);
            tracing::warn!(%addr, ?role, %error, "handshake refused: the peer's build is too old or too new for this one");
        }
        HandshakeError::Oversized => {
            bump(&counters.frames_oversized);
            tracing::warn!(%addr, ?role, "handshake refused: oversized frame");
        }
        #[cfg(feature = "tls")]
        HandshakeError::Tls(error) => {
            bump(&counters.tls_failures);
            tracing::warn!(%addr, ?role, %error, "handshake refused: TLS failed");
        }
        HandshakeError::NameNotCertified => {
            tracing::warn!(%addr, ?role, "handshake refused: the certificate does not name the replica claimed");
        }
        HandshakeError::Malformed(what) => {
            tracing::warn!(%addr, ?role, what, "handshake refused: malformed");
        }
        HandshakeError::Rejected => {
            tracing::warn!(%addr, "peer closed the connection after our authentication (another cluster secret or version?)");
        }
        HandshakeError::SelfConnection => {
            tracing::warn!(%addr, ?role, "handshake refused: connected to itself");
        }
        HandshakeError::Timeout => match role {
            Role::Acceptor => tracing::warn!(%addr, "handshake refused: timed out"),
            Role::Dialer => tracing::debug!(%addr, "handshake timed out"),
        },
        HandshakeError::Busy => {
            tracing::warn!(%addr, "connection refused: too many handshakes in progress");
        }
        HandshakeError::Random(error) => {
            tracing::error!(%addr, %error, "no randomness for a handshake challenge");
        }
        HandshakeError::Closed => {
            tracing::debug!(%addr, ?role, "connection closed during the handshake");
        }
        HandshakeError::Io(error) => {
            tracing::debug!(%addr, ?role, %error, "connection failed during the handshake");
        }
    }
}

/// An authenticated connection's keys and what was read past the handshake.
pub(super) struct Session {
    pub(super) peer: ReplicaId,
    /// The format version both sides write: the highest both read.
    pub(super) version: u8,
    /// The cluster secret that authenticated it.
    pub(super) key: KeyId,
    pub(super) seal: FrameMac,
    pub(super) open: FrameMac,
    pub(super) read_buf: BytesMut,
}

pub(super) fn encode_id(id: &ReplicaId) -> Vec<u8> {
    let name = id.name().as_str().as_bytes();
    // Names are at most 255 bytes (`MAX_REPLICA_NAME_LEN`).
    let len = u8::try_from(name.len()).unwrap_or(u8::MAX);
    let name = name.get(..usize::from(len)).unwrap_or(name);
    let mut out = Vec::with_capacity(1 + name.len() + 12);
    out.push(len);
    out.extend_from_slice(name);
    out.extend_from_slice(&id.incarnation().started_ms().to_be_bytes());
    out.extend_from_slice(&id.incarnation().nonce().to_be_bytes());
    out
}

pub(super) fn decode_id(bytes: &[u8]) -> Option<ReplicaId> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    if rest.len() != len + 12 {
        return None;
    }
    let (name, rest) = rest.split_at(len);
    let name = ReplicaName::new(std::str::from_utf8(name).ok()?).ok()?;
    let (started_ms, nonce) = rest.split_first_chunk::<8>()?;
    let nonce: [u8; 4] = nonce.try_into().ok()?;
    Some(ReplicaId::new(
        name,
        Incarnation::new(u64::from_be_bytes(*started_ms), u32::from_be_bytes(nonce)),
    ))
}

/// Checks a peer's hello; the format version both sides then write.
///
/// The magic and the version range keep their places in every version;
/// what follows them may grow (a longer hello is read up to the key id, the
/// rest being covered by the MACs all the same).
fn check_hello(hello: &[u8], versions: wire::Versions) -> Result<u8, HandshakeError> {
    if hello.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(HandshakeError::Malformed("not a hello"));
    }
    let (Some(&max), Some(&min)) = (hello.get(MAGIC.len()), hello.get(MAGIC.len() + 1)) else {
        return Err(HandshakeError::Malformed("hello length"));
    };
    let theirs = wire::Versions::new(min, max).ok_or(HandshakeError::Malformed("version range"))?;
    // The versions come before the length check: another version may have
    // a longer hello.
    let version = versions
        .negotiate(theirs)
        .map_err(HandshakeError::Version)?;
    if hello.len() < HELLO_LEN {
        return Err(HandshakeError::Malformed("hello length"));
    }
    Ok(version)
}

/// The MAC over a label, the two hellos and the ids so far.
fn transcript_mac(secret: &HmacSha256, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = secret.clone();
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Splits an auth frame into the replica id bytes and the MAC.
fn split_auth(frame: &[u8]) -> Result<(&[u8], &[u8]), HandshakeError> {
    let len = frame
        .len()
        .checked_sub(MAC_LEN)
        .ok_or(HandshakeError::Malformed("auth too short"))?;
    Ok(frame.split_at(len))
}

pub(super) async fn read_frame<T>(
    framed: &mut Framed<T, LengthDelimitedCodec>,
) -> Result<BytesMut, HandshakeError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match framed.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(error)) => Err(error.into()),
        None => Err(HandshakeError::Closed),
    }
}

/// The replica whose id bytes authenticated: neither this replica itself
/// nor one that `certified` refuses.
fn peer_of(
    id_bytes: &[u8],
    me: &ReplicaId,
    certified: &(dyn Fn(&ReplicaId) -> bool + Send + Sync),
) -> Result<ReplicaId, HandshakeError> {
    let peer = decode_id(id_bytes).ok_or(HandshakeError::Malformed("replica id"))?;
    if peer == *me {
        return Err(HandshakeError::SelfConnection);
    }
    if !certified(&peer) {
        return Err(HandshakeError::NameNotCertified);
    }
    Ok(peer)
}

/// Authenticates a fresh connection both ways (see the module docs). The
/// peer's hello must arrive within `hello_timeout`, and the replica it
/// authenticates as must be one `certified` allows (checked before the
/// acceptor answers, so a refused dialer never completes its side). The
/// hellos advertise the format `versions` each side reads; a peer with none
/// in common is refused.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    me: &ReplicaId,
    versions: wire::Versions,
    keyring: &Keyring,
    hello_timeout: Duration,
    certified: &(dyn Fn(&ReplicaId) -> bool + Send + Sync),
) -> Result<Session, HandshakeError> {
    let mut framed = Framed::new(&mut *stream, codec(HANDSHAKE_MAX_FRAME));
    // The dialer picks the secret; the acceptor's hello names its own
    // primary, for the logs only.
    let (own_key, dialing) = keyring.dialing_key();
    let mut own_hello = [0; HELLO_LEN];
    let (head, rest) = own_hello.split_at_mut(HELLO_HEAD);
    head[..MAGIC.len()].copy_from_slice(MAGIC);
    head[MAGIC.len()] = versions.max();
    head[MAGIC.len() + 1] = versions.min();
    let (challenge, key_id) = rest.split_at_mut(CHALLENGE_LEN);
    getrandom::fill(challenge).map_err(HandshakeError::Random)?;
    key_id.copy_from_slice(own_key.as_bytes());
    framed.send(Bytes::copy_from_slice(&own_hello)).await?;

    let peer_hello = tokio::time::timeout(hello_timeout, read_frame(&mut framed))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let version = check_hello(&peer_hello, versions)?;
    if peer_hello[..] == own_hello[..] {
        return Err(HandshakeError::Malformed("reflected hello"));
    }
    let (hello_d, hello_a) = match role {
        Role::Dialer => (&own_hello[..], &peer_hello[..]),
        Role::Acceptor => (&peer_hello[..], &own_hello[..]),
    };
    let (key_id, secret) = match role {
        Role::Dialer => (own_key, dialing),
        Role::Acceptor => {
            let mut id = [0; KEY_ID_LEN];
            id.copy_from_slice(&peer_hello[HELLO_LEN - KEY_ID_LEN..HELLO_LEN]);
            let id = KeyId::from_bytes(id);
            (id, keyring.get(id).ok_or(HandshakeError::UnknownKey(id))?)
        }
    };
    let secret = &secret;
    let own_id = encode_id(me);

    let (peer_id, peer_id_bytes) = match role {
        Role::Dialer => {
            let mac = transcript_mac(secret, LABEL_DIALER, &[hello_d, hello_a, &own_id]);
            let mut auth = own_id.clone();
            auth.extend_from_slice(&mac.finalize().into_bytes());
            framed.send(Bytes::from(auth)).await?;
            let frame = match read_frame(&mut framed).await {
                Err(HandshakeError::Closed) => return Err(HandshakeError::Rejected),
                other => other?,
            };
            let (id_bytes, tag) = split_auth(&frame)?;
            transcript_mac(
                secret,
                LABEL_ACCEPTOR,
                &[hello_d, hello_a, &own_id, id_bytes],
            )
            .verify_slice(tag)
            .map_err(|_| HandshakeError::BadMac)?;
            let peer = peer_of(id_bytes, me, certified)?;
            (peer, id_bytes.to_vec())
        }
        Role::Acceptor => {
            let frame = read_frame(&mut framed).await?;
            let (id_bytes, tag) = split_auth(&frame)?;
            // The MAC is checked before the id is even parsed: nothing from
            // an unauthenticated process is interpreted.
            transcript_mac(secret, LABEL_DIALER, &[hello_d, hello_a, id_bytes])
                .verify_slice(tag)
                .map_err(|_| HandshakeError::BadMac)?;
            let peer = peer_of(id_bytes, me, certified)?;
            let mac = transcript_mac(
                secret,
                LABEL_ACCEPTOR,
                &[hello_d, hello_a, id_bytes, &own_id],
            );
            let mut auth = own_id.clone();
            auth.extend_from_slice(&mac.finalize().into_bytes());
            framed.send(Bytes::from(auth)).await?;
            (peer, id_bytes.to_vec())
        }
    };

    let (id_d, id_a, seal_dir, open_dir) = match role {
        Role::Dialer => (
            &own_id,
            &peer_id_bytes,
            DIRECTION_FROM_DIALER,
            DIRECTION_FROM_ACCEPTOR,
        ),
        Role::Acceptor => (
            &peer_id_bytes,
            &own_id,
            DIRECTION_FROM_ACCEPTOR,
            DIRECTION_FROM_DIALER,
        ),
    };
    let session_key = transcript_mac(secret, LABEL_SESSION, &[hello_d, hello_a, id_d, id_a])
        .finalize()
        .into_bytes();
    let key = HmacSha256::new_from_slice(&session_key)
        .map_err(|_| HandshakeError::Malformed("session key"))?;
    // Frames the peer sent right after its last handshake frame may already
    // be buffered.
    let read_buf = framed.into_parts().read_buf;
    Ok(Session {
        peer: peer_id,
        version,
        key: key_id,
        seal: FrameMac {
            key: key.clone(),
            direction: seal_dir,
            seq: 0,
        },
        open: FrameMac {
            key,
            direction: open_dir,
            seq: 0,
        },
        read_buf,
    })
}
