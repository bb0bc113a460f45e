//! `--metrics ADDR`: two linked processes, one scraped over HTTP as
//! Prometheus would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

mod support;

use support::{Replica, addresses, mesh_args};

const SECRET: &str = "the test cluster secret, 32+ bytes long";

fn start(name: &str, listen: SocketAddr, peers: &[SocketAddr], extra: &[String]) -> Replica {
    let mut args = mesh_args(name, listen, peers, SECRET, 100);
    args.extend_from_slice(extra);
    Replica::start(&args)
}

/// The body of `GET /metrics`.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("the metrics endpoint accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("the request is sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response is read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a body");
    body.to_string()
}

/// The value of the sample of `name` carrying every one of `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_metrics_endpoint_reports_presences_replicas_and_traffic() {
    let addrs = addresses(3);
    let mut a = start(
        "n0",
        addrs[0],
        &[],
        &[
            "--metrics".into(),
            addrs[2].to_string(),
            "--track".into(),
            "room/alice/web".into(),
            "--track".into(),
            "room/bob/web".into(),
            "--track".into(),
            "lobby/carol/web".into(),
        ],
    );
    let _b = start(
        "n1",
        addrs[1],
        &[addrs[0]],
        &["--track".into(), "room/dave/ios".into()],
    );
    let n0 = [("replica", "n0")];
    let start = Instant::now();
    let body = loop {
        let body = scrape(addrs[2]);
        let ready = sample(&body, "attendance_presences", &n0) == Some(4.0)
            && sample(
                &body,
                "attendance_replicas",
                &[("replica", "n0"), ("status", "up")],
            ) == Some(1.0);
        if ready {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the metrics never showed the linked replica's presence:\n{body}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    // The gauge is the tracked count the node itself reports.
    assert_eq!(a.ask("count room", "count room"), "count room 3");
    assert_eq!(sample(&body, "attendance_topics", &n0), Some(2.0));
    assert_eq!(sample(&body, "attendance_peers_connected", &n0), Some(1.0));
    for direction in ["sent", "received"] {
        let labels = [
            ("replica", "n0"),
            ("kind", "heartbeat"),
            ("direction", direction),
        ];
        let messages = sample(&body, "attendance_messages_total", &labels);
        assert!(
            messages > Some(0.0),
            "{direction} heartbeats: {messages:?}\n{body}"
        );
        let bytes = sample(&body, "attendance_message_bytes_total", &labels);
        assert!(bytes > messages, "{direction} heartbeat bytes: {bytes:?}");
    }
    let frames = [
        ("replica", "n0"),
        ("transport", "tcp"),
        ("direction", "sent"),
    ];
    assert!(sample(&body, "attendance_transport_frames_total", &frames) > Some(0.0));
    let handshakes = [("replica", "n0"), ("outcome", "ok")];
    assert!(sample(&body, "attendance_transport_handshakes_total", &handshakes) >= Some(1.0));
    assert_eq!(
        sample(
            &body,
            "attendance_refused_messages_total",
            &[("replica", "n0"), ("reason", "rejected")]
        ),
        Some(0.0)
    );
}
