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
