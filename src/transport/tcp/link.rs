//! The tasks that run links: accepting, dialing with backoff, and each
//! authenticated connection's reader and writer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::frame::{FrameMac, codec, is_oversized, write_frame};
use super::handshake::{HandshakeError, Role, Session, handshake, refused};
use super::keyring::{KeyId, Keyring};
use super::stats::{add, bump};
use super::{LENGTH_LEN, Link, Shared, TaskCtx};
use crate::ReplicaId;
use crate::transport::TransportEvent;

/// Pause after the listener fails to accept (such as out of descriptors),
/// so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Large enough to batch many small messages into one write.
const WRITE_BUFFER: usize = 64 << 10;

/// A connection: TCP, or TLS over TCP.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

pub(super) type Conn = Box<dyn Stream>;

/// The certificate a peer presented over TLS, if any.
#[cfg(feature = "tls")]
type PeerCert = Option<crate::transport::tls::rustls::pki_types::CertificateDer<'static>>;
#[cfg(not(feature = "tls"))]
type PeerCert = Option<std::convert::Infallible>;

/// Starts TLS on a fresh connection when it is configured; the connection
/// and the certificate the peer presented.
#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
async fn secure(
    shared: &Shared,
    stream: TcpStream,
    role: Role,
    addr: SocketAddr,
) -> Result<(Conn, PeerCert), HandshakeError> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.config.tls {
        let first = |certs: Option<&[_]>| certs.and_then(|c| c.first()).cloned();
        let secured: (Conn, PeerCert) = match role {
            Role::Dialer => {
                let stream = tls
                    .connect(stream, addr)
                    .await
                    .map_err(HandshakeError::Tls)?;
                let cert = first(stream.get_ref().1.peer_certificates());
                (Box::new(stream), cert)
            }
            Role::Acceptor => {
                let stream = tls.accept(stream).await.map_err(HandshakeError::Tls)?;
                let cert = first(stream.get_ref().1.peer_certificates());
                (Box::new(stream), cert)
            }
        };
        return Ok(secured);
    }
    Ok((Box::new(stream), None))
}

/// Whether the peer that presented `cert` may be `peer`: unless replica
/// names are tied to certificates, any authenticated peer may.
#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
fn certified(shared: &Shared, cert: &PeerCert, peer: &ReplicaId) -> bool {
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.config.tls {
        return tls.allows(cert.as_ref(), peer.name().as_str());
    }
    true
}

pub(super) async fn accept_loop(ctx: TaskCtx, listener: TcpListener) {
    let shared = &ctx.shared;
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        // An IPv4 peer on a dual-stack listener arrives as ::ffff:a.b.c.d.
        match Slot::take(&ctx.shared, addr.ip().to_canonical()) {
            Some(slot) => ctx.spawn(inbound(ctx.clone(), stream, addr, slot)),
            None => refused(shared, addr, Role::Acceptor, &HandshakeError::Busy),
        }
    }
}

/// A handshake in progress: its place among all handshakes (or among
/// those kept for the configured peers) and among its address's.
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// A slot for a connection from `ip`, if its address and the pool it
    /// draws from have room. Configured peers' addresses draw on the kept
    /// slots first, so a flood from elsewhere cannot lock them out.
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Self> {
        let mut pending = shared.pending_by_ip();
        let count = pending.entry(ip).or_insert(0);
        if *count >= shared.config.max_handshakes_per_ip {
            if *count == 0 {
                pending.remove(&ip);
            }
            return None;
        }
        let reserved = shared.peer_ips().contains(&ip);
        let permit = reserved
            .then(|| Arc::clone(&shared.reserved).try_acquire_owned().ok())
            .flatten()
            .or_else(|| Arc::clone(&shared.handshakes).try_acquire_owned().ok());
        let Some(permit) = permit else {
            if *count == 0 {
                pending.remove(&ip);
            }
            return None;
        };
        *count += 1;
        Some(Self {
            shared: Arc::clone(shared),
            ip,
            _permit: permit,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut pending = self.shared.pending_by_ip();
        if let Some(count) = pending.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                pending.remove(&self.ip);
            }
        }
    }
}

async fn inbound(ctx: TaskCtx, stream: TcpStream, addr: SocketAddr, slot: Slot) {
    let shared = &ctx.shared;
    set_nodelay(&stream, addr);
    let config = &shared.config;
    let hello_timeout = config.hello_timeout.min(config.handshake_timeout);
    let handshake = tokio::time::timeout(config.handshake_timeout, async {
        // An idle connection gives its slot back after hello_timeout.
        let (mut conn, cert) =
            tokio::time::timeout(hello_timeout, secure(shared, stream, Role::Acceptor, addr))
                .await
                .map_err(|_| HandshakeError::Timeout)??;
        let session = handshake(
            &mut conn,
            Role::Acceptor,
            &config.replica,
            config.versions,
            &shared.keyring,
            hello_timeout,
            &|peer| certified(shared, &cert, peer),
        )
        .await?;
        Ok((conn, session))
    });
    let result = tokio::select! {
        () = shared.stop.cancelled() => return,
        result = handshake => result.unwrap_or(Err(HandshakeError::Timeout)),
    };
    drop(slot);
    match result {
        Ok((conn, session)) => {
            bump(&shared.counters.handshakes_ok);
            run_link(&ctx, conn, session, addr).await;
        }
        Err(error) => refused(shared, addr, Role::Acceptor, &error),
    }
}

enum DialError {
    Connect(io::Error),
    Handshake(HandshakeError),
}

pub(super) async fn dial_loop(ctx: TaskCtx, addr: SocketAddr) {
    let shared = &ctx.shared;
    let config = &shared.config;
    let mut backoff = config.connect_backoff_min;
    loop {
        let attempt =
            async {
                let stream =
                    match tokio::time::timeout(config.handshake_timeout, TcpStream::connect(addr))
                        .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => return Err(DialError::Connect(error)),
                        Err(_) => {
                            return Err(DialError::Connect(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "connect timed out",
                            )));
                        }
                    };
                set_nodelay(&stream, addr);
                let handshake = async {
                    let (mut conn, cert) = secure(shared, stream, Role::Dialer, addr).await?;
                    let session = handshake(
                        &mut conn,
                        Role::Dialer,
                        &config.replica,
                        config.versions,
                        &shared.keyring,
                        config.handshake_timeout,
                        &|peer| certified(shared, &cert, peer),
                    )
                    .await?;
                    Ok((conn, session))
                };
                match tokio::time::timeout(config.handshake_timeout, handshake).await {
                    Ok(Ok(connected)) => Ok(connected),
                    Ok(Err(error)) => Err(DialError::Handshake(error)),
                    Err(_) => Err(DialError::Handshake(HandshakeError::Timeout)),
                }
            };
        let result = tokio::select! {
            () = shared.stop.cancelled() => return,
            result = attempt => result,
        };
        match result {
            Ok((stream, session)) => {
                bump(&shared.counters.handshakes_ok);
                let started = tokio::time::Instant::now();
                run_link(&ctx, stream, session, addr).await;
                // A link that ends right after its handshake (the peer
                // refused it) does not earn a quick redial.
                if started.elapsed() >= config.connect_backoff_max {
                    backoff = config.connect_backoff_min;
                }
            }
            Err(DialError::Connect(error)) => {
                bump(&shared.counters.connect_failures);
                tracing::debug!(%addr, %error, "connect failed");
            }
            Err(DialError::Handshake(error)) => refused(shared, addr, Role::Dialer, &error),
        }
        let pause = jittered(backoff);
        backoff = backoff.saturating_mul(2).min(config.connect_backoff_max);
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// `backoff` shortened by a random amount up to half, so that replicas
/// restarted together do not dial in lockstep.
fn jittered(backoff: Duration) -> Duration {
    let half = backoff / 2;
    let random = getrandom::u32().unwrap_or(u32::MAX / 2);
    let extra = (half.as_nanos() * u128::from(random)) >> 32;
    half + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
}

fn set_nodelay(stream: &TcpStream, addr: SocketAddr) {
    // Writes are batched by hand; Nagle would only delay heartbeats.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%addr, %error, "cannot set TCP_NODELAY");
    }
}

/// Why a link ended.
enum LinkEnd {
    Eof,
    Read(io::Error),
    Write(io::Error),
    Oversized,
    BadMac,
    Idle,
    /// The secret that authenticated it was removed from the keyring.
    KeyRemoved,
    /// Nobody receives the events any more.
    Unheard,
}

/// Runs an authenticated connection until it ends, reporting the peer
/// connected first (if it is its first link) and lost last (if it was its
/// last).
async fn run_link(ctx: &TaskCtx, stream: Conn, session: Session, addr: SocketAddr) {
    let Session {
        peer,
        version,
        key,
        mut seal,
        mut open,
        read_buf,
    } = session;
    let shared = &ctx.shared;
    let mut removals = shared.keyring.removals();
    let (tx, mut rx) = mpsc::channel(shared.config.queue_len);
    let queued = Arc::new(AtomicUsize::new(0));
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let link = Link {
        conn,
        tx,
        queued: Arc::clone(&queued),
    };
    if !ctx.register(&peer, link).await {
        return;
    }
    // Messages are written at `wire::VERSION`: while this build reads one
    // format only, that is the version every link to a real build
    // negotiates. A build that adds a version converts what it sends on
    // links of an older one here.
    tracing::debug!(%peer, %addr, version, "link up");
    let end = {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader = FramedRead::new(read_half, codec(shared.config.max_frame_bytes));
        *reader.read_buffer_mut() = read_buf;
        let read = read_loop(ctx, &peer, &mut reader, &mut open);
        let write = write_loop(shared, write_half, &mut rx, &mut seal, &queued);
        tokio::pin!(read, write);
        tokio::select! {
            end = &mut read => end,
            () = key_removed(&shared.keyring, key, &mut removals) => LinkEnd::KeyRemoved,
            written = &mut write => match written {
                // Closing: what was queued is written and our side shut
                // down. Reading on until the peer closes too means the
                // socket is not reset with the peer's data unread.
                Ok(()) => read.await,
                Err(error) => LinkEnd::Write(error),
            },
        }
    };
    // Later sends to this peer fail over to another link or are counted
    // as unreachable, rather than queueing into a dead one.
    rx.close();
    let counters = &shared.counters;
    match end {
        LinkEnd::Eof => tracing::debug!(%peer, %addr, "link closed by the peer"),
        LinkEnd::Read(error) => tracing::debug!(%peer, %addr, %error, "link read failed"),
        LinkEnd::Write(error) => tracing::debug!(%peer, %addr, %error, "link write failed"),
        LinkEnd::Idle => tracing::debug!(%peer, %addr, "link idle, closed"),
        LinkEnd::Unheard => tracing::debug!(%peer, %addr, "transport dropped, link closed"),
        LinkEnd::KeyRemoved => {
            bump(&counters.links_rekeyed);
            tracing::info!(%peer, %addr, %key, "secret removed, link closed");
        }
        LinkEnd::Oversized => {
            bump(&counters.frames_oversized);
            tracing::warn!(%peer, %addr, "oversized frame, link closed");
        }
        LinkEnd::BadMac => {
            bump(&counters.frames_refused);
            tracing::warn!(%peer, %addr, "frame failed authentication, link closed");
        }
    }
    ctx.unregister(&peer, conn).await;
}

/// Returns once `key` is no longer in the keyring.
async fn key_removed(keyring: &Keyring, key: KeyId, removals: &mut watch::Receiver<u64>) {
    loop {
        if !keyring.accepts(key) {
            return;
        }
        if removals.changed().await.is_err() {
            // The ring is gone with the transport: the link ends otherwise.
            std::future::pending::<()>().await;
        }
    }
}

async fn read_loop(
    ctx: &TaskCtx,
    peer: &ReplicaId,
    reader: &mut FramedRead<ReadHalf<Conn>, LengthDelimitedCodec>,
    open: &mut FrameMac,
) -> LinkEnd {
    let counters = &ctx.shared.counters;
    let idle_timeout = ctx.shared.config.idle_timeout;
    // Buffered bytes of a frame still arriving, as of the last timeout: a
    // large frame on a slow link is progress, not idleness.
    let mut seen = reader.read_buffer().len();
    loop {
        let frame = match tokio::time::timeout(idle_timeout, reader.next()).await {
            Err(_) => {
                let buffered = reader.read_buffer().len();
                if buffered > seen {
                    seen = buffered;
                    continue;
                }
                return LinkEnd::Idle;
            }
            Ok(None) => return LinkEnd::Eof,
            Ok(Some(Err(error))) if is_oversized(&error) => return LinkEnd::Oversized,
            Ok(Some(Err(error))) => return LinkEnd::Read(error),
            Ok(Some(Ok(frame))) => frame,
        };
        seen = reader.read_buffer().len();
        bump(&counters.frames_received);
        add(&counters.bytes_received, LENGTH_LEN + frame.len());
        let Some(bytes) = open.open(frame) else {
            return LinkEnd::BadMac;
        };
        if bytes.is_empty() {
            continue;
        }
        let message = TransportEvent::Message {
            from: peer.clone(),
            bytes,
        };
        if ctx.events.send(message).await.is_err() {
            return LinkEnd::Unheard;
        }
    }
}

/// Writes queued messages, batching what is waiting into one flush, and a
/// keepalive when nothing was sent for a while. Returns `Ok` once the queue
/// is closed and drained.
async fn write_loop(
    shared: &Shared,
    write_half: WriteHalf<Conn>,
    rx: &mut mpsc::Receiver<Bytes>,
    seal: &mut FrameMac,
    queued: &AtomicUsize,
) -> io::Result<()> {
    let counters = &shared.counters;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, write_half);
    loop {
        match tokio::time::timeout(shared.config.keepalive_interval, rx.recv()).await {
            Ok(Some(bytes)) => {
                queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                write_frame(&mut out, seal, counters, &bytes).await?;
            }
            Ok(None) => {
                out.flush().await?;
                out.shutdown().await?;
                return Ok(());
            }
            Err(_) => write_frame(&mut out, seal, counters, &[]).await?,
        }
        while let Ok(bytes) = rx.try_recv() {
            queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            write_frame(&mut out, seal, counters, &bytes).await?;
        }
        out.flush().await?;
    }
}
