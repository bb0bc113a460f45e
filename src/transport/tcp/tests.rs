//! The tests of the TCP mesh: real transports and raw peers on loopback
//! sockets.

use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::handshake::{CHALLENGE_LEN, HELLO_LEN, MAGIC, Role, decode_id, encode_id, handshake};
use super::*;
use crate::{Incarnation, ReplicaName, wire};

const WAIT: Duration = Duration::from_secs(5);
const SECRET: &str = "a shared secret for the tests, 32+ bytes";

fn id(name: &str, nonce: u32) -> ReplicaId {
    ReplicaId::new(
        ReplicaName::new(name).unwrap(),
        Incarnation::new(1_764_000_000_000, nonce),
    )
}

fn config(replica: ReplicaId, secret: &str) -> TcpConfig {
    let mut config = TcpConfig::new(replica, "127.0.0.1:0".parse().unwrap(), secret);
    config.connect_backoff_min = Duration::from_millis(10);
    config.connect_backoff_max = Duration::from_millis(100);
    config.handshake_timeout = Duration::from_secs(1);
    config.close_timeout = Duration::from_secs(1);
    config
}

async fn bind(replica: ReplicaId, peers: &[SocketAddr]) -> TcpTransport {
    let config = config(replica, SECRET).with_peers(peers.iter().copied());
    TcpTransport::bind(config).await.unwrap()
}

async fn next(transport: &mut TcpTransport) -> TransportEvent {
    tokio::time::timeout(WAIT, transport.recv())
        .await
        .expect("no event in time")
        .expect("transport closed")
}

async fn quiet(transport: &mut TcpTransport, time: Duration) {
    if let Ok(event) = tokio::time::timeout(time, transport.recv()).await {
        panic!("unexpected event {event:?}");
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn message(from: &ReplicaId, bytes: &'static [u8]) -> TransportEvent {
    TransportEvent::Message {
        from: from.clone(),
        bytes: Bytes::from_static(bytes),
    }
}

/// Two transports, `a` dialing `b`, both reporting the other connected.
async fn pair() -> (TcpTransport, ReplicaId, TcpTransport, ReplicaId) {
    let (ida, idb) = (id("a", 1), id("b", 1));
    let mut b = bind(idb.clone(), &[]).await;
    let mut a = bind(ida.clone(), &[b.local_addr()]).await;
    assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    (a, ida, b, idb)
}

/// Reads until the other side closes; what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("connection not closed");
    got
}

fn with_timeout<F: Future>(future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(WAIT, future)
}

#[tokio::test]
async fn peers_connect_and_exchange_messages() {
    let (mut a, ida, mut b, idb) = pair().await;

    a.send(
        &Destination::Replica(idb.clone()),
        Bytes::from_static(b"a to b"),
    );
    assert_eq!(next(&mut b).await, message(&ida, b"a to b"));
    b.send(&Destination::All, Bytes::from_static(b"b to all"));
    assert_eq!(next(&mut a).await, message(&idb, b"b to all"));
    b.send(
        &Destination::Replica(ida.clone()),
        Bytes::from_static(b"b to a"),
    );
    assert_eq!(next(&mut a).await, message(&idb, b"b to a"));
    a.send(&Destination::All, Bytes::from_static(b"a to all"));
    assert_eq!(next(&mut b).await, message(&ida, b"a to all"));

    // A large message arrives intact and costs 20 bytes beyond its payload.
    let large: Bytes = (0..1_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let before = a.stats().bytes_sent;
    a.send(&Destination::Replica(idb.clone()), large.clone());
    match next(&mut b).await {
        TransportEvent::Message { from, bytes } => {
            assert_eq!(from, ida);
            assert_eq!(bytes, large);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        a.stats().bytes_sent - before,
        large.len() as u64 + FRAME_OVERHEAD as u64
    );

    // Nothing goes to an unknown replica; empty messages are refused.
    a.send(&Destination::Replica(id("c", 1)), Bytes::from_static(b"x"));
    a.send(&Destination::All, Bytes::new());
    let stats = a.stats();
    assert_eq!(stats.dropped_unreachable, 1);
    assert_eq!(stats.dropped_invalid, 1);
    assert_eq!(stats.handshakes_ok, 1);
    assert_eq!(stats.frames_sent, 3);
    assert_eq!(b.stats().frames_received, 3);

    a.close().await;
    assert_eq!(next(&mut b).await, TransportEvent::LinkLost(ida));
    assert!(with_timeout(a.recv()).await.unwrap().is_none());
    b.close().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_nothing_reported() {
    let mut b = bind(id("b", 1), &[]).await;
    let config =
        config(id("a", 1), "another secret, also 32 bytes or more").with_peers([b.local_addr()]);
    let mut a = TcpTransport::bind(config).await.unwrap();
    // b does not hold the secret a's hello names.
    eventually("an unknown key", || b.stats().unknown_keys >= 1).await;
    b.send(&Destination::All, Bytes::from_static(b"secret"));
    a.send(&Destination::All, Bytes::from_static(b"forged"));
    b.send(
        &Destination::Replica(id("a", 1)),
        Bytes::from_static(b"secret"),
    );
    a.send(
        &Destination::Replica(id("b", 1)),
        Bytes::from_static(b"forged"),
    );
    let (_, _) = tokio::join!(
        quiet(&mut a, Duration::from_millis(500)),
        quiet(&mut b, Duration::from_millis(500))
    );
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sb.handshakes_refused >= 1, "{sb:?}");
    assert!(sa.handshakes_refused >= 1, "{sa:?}");
    assert_eq!((sa.handshakes_ok, sb.handshakes_ok), (0, 0));
    assert_eq!((sa.frames_sent, sb.frames_sent), (0, 0));
    assert_eq!((sa.dropped_unreachable, sb.dropped_unreachable), (1, 1));
}

#[tokio::test]
async fn malformed_handshakes_are_refused_and_good_peers_still_served() {
    let mut config = config(id("b", 1), SECRET);
    config.handshake_timeout = Duration::from_millis(300);
    let mut b = TcpTransport::bind(config).await.unwrap();
    let addr = b.local_addr();
    let frame = |body: &[u8]| {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    };
    // A build that reads only versions newer than this one's.
    let mut wrong_version = MAGIC.to_vec();
    wrong_version.push(wire::VERSION + 2);
    wrong_version.push(wire::VERSION + 2);
    wrong_version.extend_from_slice(&[7; CHALLENGE_LEN]);
    let mut truncated = frame(&wrong_version);
    truncated[LENGTH_LEN + MAGIC.len()] = wire::VERSION;
    truncated.truncate(12);
    let attempts: Vec<(Vec<u8>, bool)> = vec![
        (b"GET / HTTP/1.1\r\nHost: b\r\n\r\n".to_vec(), false),
        (frame(b"hello, who is there?"), false),
        (vec![0xff; 4], false),
        (frame(&wrong_version), false),
        // Cut short, then the write side closed.
        (truncated.clone(), true),
        // Cut short, and left hanging until the handshake times out.
        (truncated, false),
    ];
    for (bytes, shutdown) in attempts {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        if shutdown {
            stream.shutdown().await.unwrap();
        }
        // An unauthenticated process gets the hello and nothing more.
        let got = read_to_close(&mut stream).await;
        assert!(got.len() <= LENGTH_LEN + HELLO_LEN, "{} bytes", got.len());
    }
    eventually("six refusals", || b.stats().handshakes_refused == 6).await;
    let stats = b.stats();
    assert_eq!(stats.version_mismatches, 1);
    assert_eq!(stats.frames_oversized, 2);
    assert_eq!(stats.auth_failures, 0);

    let ida = id("a", 1);
    let mut a = bind(ida.clone(), &[addr]).await;
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    assert_eq!(next(&mut a).await, TransportEvent::Connected(id("b", 1)));
    a.send(&Destination::All, Bytes::from_static(b"still here"));
    assert_eq!(next(&mut b).await, message(&ida, b"still here"));
}

#[tokio::test]
async fn a_replayed_or_forged_frame_closes_the_link() {
    let mut b = bind(id("b", 1), &[]).await;
    let secret = Keyring::new(SECRET).unwrap();
    let me = id("raw", 1);
    let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut session = with_timeout(handshake(
        &mut stream,
        Role::Dialer,
        &me,
        wire::Versions::SUPPORTED,
        &secret,
        WAIT,
        &|_| true,
    ))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(session.peer, id("b", 1));
    assert_eq!(next(&mut b).await, TransportEvent::Connected(me.clone()));

    let mut frame = ((2 + TAG_LEN) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(b"hi");
    frame.extend_from_slice(&session.seal.seal(b"hi"));
    stream.write_all(&frame).await.unwrap();
    assert_eq!(next(&mut b).await, message(&me, b"hi"));
    // The same frame again: its sequence number is past.
    stream.write_all(&frame).await.unwrap();
    assert_eq!(next(&mut b).await, TransportEvent::LinkLost(me.clone()));
    assert_eq!(b.stats().frames_refused, 1);

    // A frame with an altered payload.
    let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut session = with_timeout(handshake(
        &mut stream,
        Role::Dialer,
        &me,
        wire::Versions::SUPPORTED,
        &secret,
        WAIT,
        &|_| true,
    ))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(next(&mut b).await, TransportEvent::Connected(me.clone()));
    let mut frame = ((2 + TAG_LEN) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(b"ho");
    frame.extend_from_slice(&session.seal.seal(b"hi"));
    stream.write_all(&frame).await.unwrap();
    assert_eq!(next(&mut b).await, TransportEvent::LinkLost(me));
    assert_eq!(b.stats().frames_refused, 2);
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    let (mut a, ida, mut b, idb) = pair().await;
    let addr = b.local_addr();
    b.close().await;
    drop(b);
    assert_eq!(next(&mut a).await, TransportEvent::LinkLost(idb));

    let restarted = id("b", 2);
    let mut config = config(restarted.clone(), SECRET);
    config.listen = addr;
    let mut b = with_timeout(async {
        loop {
            match TcpTransport::bind(config.clone()).await {
                Ok(b) => break b,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut a).await,
        TransportEvent::Connected(restarted.clone())
    );
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    a.send(
        &Destination::Replica(restarted),
        Bytes::from_static(b"welcome back"),
    );
    assert_eq!(next(&mut b).await, message(&ida, b"welcome back"));
}

#[tokio::test]
async fn peers_dialing_each_other_are_reported_once() {
    let (ida, idb) = (id("a", 1), id("b", 1));
    let mut b = bind(idb.clone(), &[]).await;
    let mut a = bind(ida.clone(), &[b.local_addr()]).await;
    b.add_peer(a.local_addr()).unwrap();
    assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    eventually("two links each way", || {
        a.stats().handshakes_ok == 2 && b.stats().handshakes_ok == 2
    })
    .await;
    a.send(&Destination::All, Bytes::from_static(b"one"));
    assert_eq!(next(&mut b).await, message(&ida, b"one"));
    quiet(&mut b, Duration::from_millis(100)).await;
    quiet(&mut a, Duration::from_millis(100)).await;

    b.close().await;
    assert_eq!(next(&mut a).await, TransportEvent::LinkLost(idb));
    quiet(&mut a, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_full_queue_drops_instead_of_blocking() {
    let (ida, idb) = (id("a", 1), id("b", 1));
    let mut b = bind(idb.clone(), &[]).await;
    let mut config = config(ida.clone(), SECRET).with_peers([b.local_addr()]);
    config.queue_len = 2;
    let mut a = TcpTransport::bind(config).await.unwrap();
    assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    // On this single-threaded runtime the writer cannot run between
    // these sends: two fit, the rest are dropped.
    for _ in 0..100 {
        a.send(&Destination::Replica(idb.clone()), Bytes::from_static(b"m"));
    }
    assert_eq!(a.stats().dropped_full, 98);
    assert_eq!(next(&mut b).await, message(&ida, b"m"));
    assert_eq!(next(&mut b).await, message(&ida, b"m"));
    quiet(&mut b, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn an_idle_peer_is_dropped_and_keepalives_keep_links_up() {
    let (ida, idb) = (id("a", 1), id("b", 1));
    let mut config_b = config(idb.clone(), SECRET);
    config_b.keepalive_interval = Duration::from_millis(20);
    config_b.idle_timeout = Duration::from_millis(100);
    let mut b = TcpTransport::bind(config_b).await.unwrap();
    let mut config_a = config(ida.clone(), SECRET).with_peers([b.local_addr()]);
    config_a.keepalive_interval = Duration::from_millis(20);
    config_a.idle_timeout = Duration::from_millis(100);
    let mut a = TcpTransport::bind(config_a).await.unwrap();
    assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    // Several idle timeouts pass without a message: keepalives hold.
    quiet(&mut a, Duration::from_millis(400)).await;
    assert!(b.stats().frames_received >= 5);

    // A raw peer that authenticates and then says nothing is dropped.
    let secret = Keyring::new(SECRET).unwrap();
    let raw = id("raw", 1);
    let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
    with_timeout(handshake(
        &mut stream,
        Role::Dialer,
        &raw,
        wire::Versions::SUPPORTED,
        &secret,
        WAIT,
        &|_| true,
    ))
    .await
    .unwrap()
    .unwrap();
    assert_eq!(next(&mut b).await, TransportEvent::Connected(raw.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::LinkLost(raw));
}

#[tokio::test]
async fn unusable_settings_are_refused() {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let refused = async |config: TcpConfig| {
        matches!(
            TcpTransport::bind(config).await,
            Err(TransportError::Config { .. })
        )
    };
    assert!(refused(TcpConfig::new(id("a", 1), listen, "")).await);
    let mut config = TcpConfig::new(id("a", 1), listen, SECRET);
    config.queue_len = 0;
    assert!(refused(config).await);
    let mut config = TcpConfig::new(id("a", 1), listen, SECRET);
    config.max_frame_bytes = 1024;
    assert!(refused(config).await);
    let mut config = TcpConfig::new(id("a", 1), listen, SECRET);
    config.idle_timeout = config.keepalive_interval;
    assert!(refused(config).await);
    assert!(!format!("{:?}", TcpConfig::new(id("a", 1), listen, SECRET)).contains(SECRET));
}

#[test]
fn replica_ids_round_trip_and_junk_is_refused() {
    let long = "n".repeat(255);
    for replica in [id("a", 1), id(&long, u32::MAX)] {
        assert_eq!(decode_id(&encode_id(&replica)), Some(replica));
    }
    let bytes = encode_id(&id("node", 9));
    for cut in 0..bytes.len() {
        assert_eq!(decode_id(&bytes[..cut]), None);
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(decode_id(&longer), None);
    assert_eq!(decode_id(&[0; 13]), None, "empty name");
    assert_eq!(
        decode_id(&[2, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        None,
        "not UTF-8"
    );
}

#[cfg(feature = "tls")]
mod tls;

#[tokio::test]
async fn secrets_rotate_on_live_links_and_removed_ones_close_them() {
    let (mut a, ida, mut b, idb) = pair().await;
    let new = "the next cluster secret, 32+ bytes long";
    for t in [&a, &b] {
        t.keyring().install(new).unwrap();
    }
    for t in [&a, &b] {
        t.keyring().use_secret(Keyring::key_id(new)).unwrap();
    }
    assert!(a.keyring().remove(Keyring::key_id(new)).is_err(), "in use");
    // Removing the old secret closes the link it authenticated; it is
    // dialed again with the new one.
    for t in [&a, &b] {
        t.keyring().remove(Keyring::key_id(SECRET)).unwrap();
    }
    assert_eq!(next(&mut a).await, TransportEvent::LinkLost(idb.clone()));
    assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::LinkLost(ida.clone()));
    assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
    assert!(a.stats().links_rekeyed >= 1);
    a.send(&Destination::All, Bytes::from_static(b"rekeyed"));
    assert_eq!(next(&mut b).await, message(&ida, b"rekeyed"));

    // A replica that only holds the old secret is refused now.
    let mut c = bind(id("c", 1), &[b.local_addr()]).await;
    eventually("an unknown key", || b.stats().unknown_keys >= 1).await;
    quiet(&mut c, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_second_connection_claiming_a_live_peer_captures_nothing() {
    let (mut a, ida, mut b, _) = pair().await;
    // Another process holding the secret claims to be a.
    let ring = Keyring::new(SECRET).unwrap();
    let mut stream = TcpStream::connect(b.local_addr()).await.unwrap();
    let mut session = with_timeout(handshake(
        &mut stream,
        Role::Dialer,
        &ida,
        wire::Versions::SUPPORTED,
        &ring,
        WAIT,
        &|_| true,
    ))
    .await
    .unwrap()
    .unwrap();
    b.send(
        &Destination::Replica(ida.clone()),
        Bytes::from_static(b"for a"),
    );
    assert_eq!(
        next(&mut a).await,
        message(&id("b", 1), b"for a"),
        "the first link keeps a's traffic"
    );
    // A third link claiming a is refused at once.
    let mut third = TcpStream::connect(b.local_addr()).await.unwrap();
    with_timeout(handshake(
        &mut third,
        Role::Dialer,
        &ida,
        wire::Versions::SUPPORTED,
        &ring,
        WAIT,
        &|_| true,
    ))
    .await
    .unwrap()
    .unwrap();
    eventually("a refused link", || b.stats().links_refused >= 1).await;
    let mut frame = ((2 + TAG_LEN) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(b"hi");
    frame.extend_from_slice(&session.seal.seal(b"hi"));
    stream.write_all(&frame).await.unwrap();
    // What it says arrives as a's: the protocol decides what to believe.
    assert_eq!(next(&mut b).await, message(&ida, b"hi"));
}

#[tokio::test]
async fn a_link_refused_after_its_handshake_is_not_redialed_in_a_tight_loop() {
    // b takes one link in all, and c holds it: a's links are closed right
    // after their handshakes.
    let mut b_config = config(id("b", 1), SECRET);
    b_config.max_links = 1;
    let mut b = TcpTransport::bind(b_config).await.unwrap();
    let _c = bind(id("c", 1), &[b.local_addr()]).await;
    assert_eq!(next(&mut b).await, TransportEvent::Connected(id("c", 1)));
    let _a = bind(id("a", 1), &[b.local_addr()]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = b.stats().links_refused;
    // Dialing on at the 10 ms minimum would be a hundred times a second;
    // the backoff grows to its 100 ms maximum instead.
    assert!(
        (2..=25).contains(&refused),
        "{refused} links refused in 1 s"
    );
}

#[test]
fn a_secret_shorter_than_32_bytes_is_refused() {
    let short = "x".repeat(MIN_SECRET_LEN - 1);
    assert!(matches!(
        Keyring::new(&short),
        Err(TransportError::Config {
            setting: "secret",
            ..
        })
    ));
    assert!(Keyring::new("x".repeat(MIN_SECRET_LEN)).is_ok());
    let ring = Keyring::new(SECRET).unwrap();
    assert!(ring.install(&short).is_err());
    assert_eq!(ring.key_ids(), vec![Keyring::key_id(SECRET)]);
    assert!(!format!("{ring:?}").contains(SECRET));
}

/// Connections from `ip`, each held open without a word until the other
/// side closes it, then opened again; until `stop`.
async fn idle_connections(ip: std::net::IpAddr, to: SocketAddr, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if socket.bind(SocketAddr::new(ip, 0)).is_err() {
            return;
        }
        let Ok(mut stream) = socket.connect(to).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut buf = [0; 256];
        tokio::select! {
            () = stop.cancelled() => return,
            _ = async { while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {} } => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_keep_a_configured_peer_out() {
    // v lists an address of a's machine among its peers (where nothing
    // answers, so the link can only come from a dialing v); a dials v while
    // 128 tasks from 127.0.0.2 and up hold connections open without a
    // word.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut v_config = config(id("v", 1), SECRET).with_peers([closed_addr]);
    v_config.handshake_timeout = Duration::from_secs(5);
    let mut v = TcpTransport::bind(v_config).await.unwrap();
    let stop = CancellationToken::new();
    for i in 0..128u8 {
        let ip = std::net::IpAddr::from([127, 0, 0, 2 + i]);
        tokio::spawn(idle_connections(ip, v.local_addr(), stop.clone()));
    }
    eventually("the flood refused", || v.stats().handshakes_busy >= 100).await;
    let mut a_config = config(id("a", 1), SECRET).with_peers([v.local_addr()]);
    a_config.handshake_timeout = Duration::from_secs(5);
    let started = tokio::time::Instant::now();
    let mut a = TcpTransport::bind(a_config).await.unwrap();
    assert_eq!(next(&mut a).await, TransportEvent::Connected(id("v", 1)));
    assert_eq!(next(&mut v).await, TransportEvent::Connected(id("a", 1)));
    let waited = started.elapsed();
    stop.cancel();
    let stats = v.stats();
    assert!(stats.handshakes_refused >= 128, "{stats:?}");
    assert!(
        stats.refusals_not_logged > 0,
        "refusal logs are rate-limited"
    );
    assert!(waited < Duration::from_secs(5), "took {waited:?}");
}

/// Builds of other format versions in a rolling upgrade: each advertises
/// the versions it would read.
mod versions;
