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
mod tls {
    use std::sync::Mutex;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::transport::tls::{TlsConfig, TlsError};

    const MARKER: &[u8] = b"a presence nobody outside may read";

    fn fixture(file: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/tls/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The cluster's authority, and a replica certificate signed by it
    /// (`cluster`) or by another authority (`other`).
    fn tls(cert: &str) -> TlsConfig {
        TlsConfig::from_pem(
            &fixture("cluster-ca.pem"),
            &fixture(&format!("{cert}-node.pem")),
            &fixture(&format!("{cert}-node.key")),
        )
        .unwrap()
    }

    fn tls_config(replica: ReplicaId, cert: Option<&str>) -> TcpConfig {
        let mut config = config(replica, SECRET);
        config.tls = cert.map(tls);
        config
    }

    /// Forwards one connection from its own address to `to`, recording
    /// every byte that crosses it, both ways.
    async fn recording_proxy(to: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            let (inbound, _) = listener.accept().await.unwrap();
            let outbound = TcpStream::connect(to).await.unwrap();
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            let pipe = |mut from: tokio::net::tcp::OwnedReadHalf,
                        mut to: tokio::net::tcp::OwnedWriteHalf,
                        record: Arc<Mutex<Vec<u8>>>| async move {
                let mut buf = [0; 4096];
                while let Ok(n @ 1..) = from.read(&mut buf).await {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            };
            tokio::join!(
                pipe(in_read, out_write, Arc::clone(&record)),
                pipe(out_read, in_write, record),
            );
        });
        (addr, seen)
    }

    /// Sends the marker from a to b through a recording proxy; whether
    /// it crossed the wire readable.
    async fn marker_visible(cert: Option<&str>) -> bool {
        let (ida, idb) = (id("a", 1), id("b", 1));
        let mut b = TcpTransport::bind(tls_config(idb.clone(), cert))
            .await
            .unwrap();
        let (proxy, seen) = recording_proxy(b.local_addr()).await;
        let config = tls_config(ida.clone(), cert).with_peers([proxy]);
        let mut a = TcpTransport::bind(config).await.unwrap();
        assert_eq!(next(&mut a).await, TransportEvent::Connected(idb.clone()));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(ida.clone()));
        a.send(&Destination::Replica(idb), Bytes::from_static(MARKER));
        assert_eq!(next(&mut b).await, message(&ida, MARKER));
        let seen = seen.lock().unwrap();
        seen.windows(MARKER.len()).any(|w| w == MARKER)
    }

    #[tokio::test]
    async fn with_tls_messages_cross_the_wire_encrypted() {
        assert!(
            marker_visible(None).await,
            "plain TCP carries payloads as they are"
        );
        assert!(
            !marker_visible(Some("cluster")).await,
            "TLS must hide payloads"
        );
    }

    #[tokio::test]
    async fn plain_peers_and_untrusted_certificates_are_refused() {
        let (ida, idb) = (id("a", 1), id("b", 1));
        let mut a = TcpTransport::bind(tls_config(ida, Some("cluster")))
            .await
            .unwrap();
        // b dials without TLS, then with a certificate of another
        // authority, then a's TLS dials b's plain listener: nothing
        // connects, and a counts each refusal.
        for cert in [None, Some("other")] {
            let config = tls_config(idb.clone(), cert).with_peers([a.local_addr()]);
            let mut b = TcpTransport::bind(config).await.unwrap();
            eventually("a refusing b", || a.stats().tls_failures >= 1).await;
            quiet(&mut b, Duration::from_millis(200)).await;
            b.close().await;
        }
        let b = TcpTransport::bind(tls_config(idb, None)).await.unwrap();
        a.add_peer(b.local_addr()).unwrap();
        eventually("a failing TLS towards b", || a.stats().tls_failures >= 3).await;
        quiet(&mut a, Duration::from_millis(200)).await;
        assert_eq!(a.stats().handshakes_ok, 0);
        assert_eq!(b.stats().handshakes_ok, 0);
    }

    /// A transport for replica `name` presenting the certificate made for
    /// `cert_name`, with replica names tied to certificates.
    async fn named(name: &str, cert_name: &str, peers: &[SocketAddr]) -> TcpTransport {
        let tls = TlsConfig::from_pem(
            &fixture("names-ca.pem"),
            &fixture(&format!("named-{cert_name}.pem")),
            &fixture(&format!("named-{cert_name}.key")),
        )
        .unwrap()
        .with_replica_names();
        let mut config = config(id(name, 1), SECRET).with_peers(peers.iter().copied());
        config.tls = Some(tls);
        TcpTransport::bind(config).await.unwrap()
    }

    #[tokio::test]
    async fn with_replica_names_a_member_speaks_only_as_its_certificate_names() {
        let mut b = named("b", "b", &[]).await;
        let mut a = named("a", "a", &[b.local_addr()]).await;
        assert_eq!(next(&mut a).await, TransportEvent::Connected(id("b", 1)));
        assert_eq!(next(&mut b).await, TransportEvent::Connected(id("a", 1)));
        // A member with the secret and a's certificate claims to be c.
        let mut c = named("c", "a", &[b.local_addr()]).await;
        eventually("c refused", || b.stats().names_not_certified >= 1).await;
        quiet(&mut c, Duration::from_millis(200)).await;
        quiet(&mut b, Duration::from_millis(10)).await;
        // b refuses to dial a peer whose certificate names another
        // replica, too.
        b.add_peer(c.local_addr()).unwrap();
        eventually("b refusing c", || b.stats().names_not_certified >= 2).await;
    }

    #[test]
    fn unusable_pem_is_a_typed_error() {
        let (ca, cert, key) = (
            fixture("cluster-ca.pem"),
            fixture("cluster-node.pem"),
            fixture("cluster-node.key"),
        );
        let junk = b"not PEM at all".as_slice();
        let wrong_key = fixture("other-node.key");
        let check = |ca: &[u8], cert: &[u8], key: &[u8], expected: &dyn Fn(&TlsError) -> bool| {
            match TlsConfig::from_pem(ca, cert, key) {
                Err(TransportError::Tls(error)) => {
                    assert!(expected(&error), "unexpected {error:?}");
                    let detailed = matches!(error, TlsError::Missing(_))
                        || std::error::Error::source(&error).is_some();
                    assert!(detailed, "{error:?} lost its source");
                }
                other => panic!("expected a TLS error, got {other:?}"),
            }
        };
        check(junk, &cert, &key, &|e| {
            matches!(e, TlsError::Missing("certificate authority"))
        });
        check(&ca, junk, &key, &|e| {
            matches!(e, TlsError::Missing("certificate"))
        });
        check(&ca, &cert, junk, &|e| {
            matches!(
                e,
                TlsError::Pem {
                    what: "private key",
                    ..
                }
            )
        });
        check(&ca, &cert, &wrong_key, &|e| {
            matches!(e, TlsError::Rejected { .. })
        });
    }
}

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

/// Builds of other format versions, for the rolling upgrade below: each
/// advertises the versions it would read.
mod versions {
    use super::*;
    use crate::protocol::Config;
    use crate::transport::TransportStats;
    use crate::wire::Versions;
    use crate::{Tracker, TrackerMetrics};

    /// This build.
    const OLD: Versions = Versions::SUPPORTED;

    /// The next build: it reads this build's version and its own.
    fn next() -> Versions {
        Versions::new(wire::MIN_VERSION, wire::VERSION + 1).unwrap()
    }

    /// A build two versions on, which stopped reading this one.
    fn far() -> Versions {
        Versions::new(wire::VERSION + 2, wire::VERSION + 2).unwrap()
    }

    /// A tracker advertising `versions`, and its address.
    async fn start(
        name: &str,
        versions: Versions,
        peers: &[SocketAddr],
    ) -> (Tracker<String>, SocketAddr) {
        let mut addr = None;
        let tracker = Tracker::builder(name)
            .config(Config::with_broadcast_period(Duration::from_millis(50)))
            .start_with_async(|id| async {
                let config = config(id, SECRET)
                    .with_versions(versions)
                    .with_peers(peers.iter().copied());
                let transport = TcpTransport::bind(config).await?;
                addr = Some(transport.local_addr());
                Ok::<_, TransportError>(transport)
            })
            .await
            .unwrap();
        (tracker, addr.unwrap())
    }

    fn keys(tracker: &Tracker<String>) -> Vec<String> {
        let mut keys: Vec<String> = tracker
            .list("room")
            .into_iter()
            .map(|g| g.key.as_str().to_string())
            .collect();
        keys.sort();
        keys
    }

    fn tcp(metrics: &TrackerMetrics) -> TcpStats {
        match &metrics.transport {
            Some(TransportStats::Tcp(stats)) => stats.clone(),
            other => panic!("not the TCP mesh: {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolling_upgrade_converges_and_a_build_without_a_common_version_is_refused() {
        // Two replicas of this build.
        let (a, addr_a) = start("a", OLD, &[]).await;
        let (b, _) = start("b", OLD, &[addr_a]).await;
        let _alice = a.track("room", "alice", "web".into()).unwrap();
        eventually("b to see alice", || keys(&b) == ["alice"]).await;

        // b is upgraded: stopped, then started again as the next build.
        b.shutdown().await;
        let (b, addr_b) = start("b", next(), &[addr_a]).await;
        let _bob = b.track("room", "bob", "web".into()).unwrap();
        eventually("the old and the next build to converge", || {
            keys(&a) == ["alice", "bob"] && keys(&b) == ["alice", "bob"]
        })
        .await;

        // A build that no longer reads this one is refused by both, and
        // changes nothing for them.
        let (c, _) = start("c", far(), &[addr_a, addr_b]).await;
        let _carol = c.track("room", "carol", "web".into()).unwrap();
        eventually("both to refuse the far build", || {
            tcp(&a.metrics()).version_mismatches > 0 && tcp(&b.metrics()).version_mismatches > 0
        })
        .await;
        let _dave = a.track("room", "dave", "web".into()).unwrap();
        eventually("b to see dave", || keys(&b) == ["alice", "bob", "dave"]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(keys(&a), ["alice", "bob", "dave"]);
        assert_eq!(keys(&b), ["alice", "bob", "dave"]);
        assert_eq!(keys(&c), ["carol"]);
        assert_eq!(a.metrics().peers_connected, 1);
        assert_eq!(c.metrics().peers_connected, 0);
        assert_eq!(tcp(&c.metrics()).handshakes_ok, 0);
        for t in [a, b, c] {
            t.shutdown().await;
        }
    }
}
