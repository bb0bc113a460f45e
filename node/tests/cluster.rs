//! Real processes on loopback TCP: `attendance-node` replicas tracking,
//! crashing (SIGKILL), restarting, leaving, and refusing strangers and bad
//! bytes.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const BROADCAST_MS: u64 = 100;
const SECRET: &str = "the test cluster secret, 32+ bytes long";

mod support;

use support::{Replica, addresses, mesh_args};

/// Starts a replica of the test cluster subscribed to `room`.
fn replica(
    name: &str,
    listen: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    tracks: &[&str],
) -> Replica {
    replica_with(name, listen, peers, secret, tracks, &[])
}

/// [`replica`] with more arguments.
fn replica_with(
    name: &str,
    listen: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    tracks: &[&str],
    extra: &[String],
) -> Replica {
    let mut args = mesh_args(name, listen, peers, secret, BROADCAST_MS);
    args.extend(["--topic".into(), "room".into()]);
    for t in tracks {
        args.extend(["--track".into(), t.to_string()]);
    }
    args.extend_from_slice(extra);
    Replica::start(&args)
}

/// `key=meta` pairs a replica lists on `room`, sorted.
fn list(r: &mut Replica) -> Vec<String> {
    let line = r.ask("list room", "list room");
    let mut rows: Vec<String> = line
        .trim_start_matches("list room")
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

fn sorted(rows: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = rows.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Polls until every replica lists `expected`; the time it took.
fn converge(replicas: &mut [&mut Replica], expected: &[&str], limit: Duration) -> Duration {
    let start = Instant::now();
    let expected = sorted(expected);
    loop {
        let lists: Vec<Vec<String>> = replicas.iter_mut().map(|r| list(r)).collect();
        if lists.iter().all(|l| *l == expected) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no convergence on {expected:?} in {limit:?}: {lists:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn cluster(tracks: [&[&str]; 3]) -> (Vec<Replica>, Vec<SocketAddr>) {
    let addrs = addresses(3);
    let replicas = (0..3)
        .map(|i| {
            let peers: Vec<SocketAddr> = (0..3).filter(|&j| j != i).map(|j| addrs[j]).collect();
            replica(&format!("n{i}"), addrs[i], &peers, SECRET, tracks[i])
        })
        .collect();
    (replicas, addrs)
}

/// A cluster whose three replicas all list `expected`.
fn converged_cluster(tracks: [&[&str]; 3], expected: &[&str]) -> (Vec<Replica>, Vec<SocketAddr>) {
    let (mut replicas, addrs) = cluster(tracks);
    let mut all: Vec<&mut Replica> = replicas.iter_mut().collect();
    converge(&mut all, expected, Duration::from_secs(10));
    (replicas, addrs)
}

#[test]
fn three_processes_converge_on_tracks_untracks_and_updates() {
    let (mut r, _) = converged_cluster(
        [&["room/alice/web"], &["room/bob/ios"], &[]],
        &["alice=web", "bob=ios"],
    );
    let [a, b, c] = r.as_mut_slice() else {
        unreachable!()
    };
    c.send("track room carol web");
    a.send("update room alice mobile");
    b.send("untrack room bob");
    converge(
        &mut [a, b, c],
        &["alice=mobile", "carol=web"],
        Duration::from_secs(10),
    );
}

#[test]
fn a_killed_process_leaves_within_four_periods_and_a_restart_brings_no_stale_presence() {
    let (mut r, addrs) = converged_cluster(
        [&["room/alice/web"], &["room/bob/ios"], &["room/dave/web"]],
        &["alice=web", "bob=ios", "dave=web"],
    );
    {
        let [a, b, c] = r.as_mut_slice() else {
            unreachable!()
        };
        c.send("track room erin web");
        converge(
            &mut [a, b, c],
            &["alice=web", "bob=ios", "dave=web", "erin=web"],
            Duration::from_secs(10),
        );
        c.kill();
        let took = converge(
            &mut [a, b],
            &["alice=web", "bob=ios"],
            Duration::from_secs(10),
        );
        assert!(
            took <= Duration::from_millis(4 * BROADCAST_MS + 200),
            "the killed replica's presences took {took:?} to leave"
        );
    }
    // Restarted on the same port, as a new incarnation tracking only dave.
    r[2] = replica(
        "n2",
        addrs[2],
        &[addrs[0], addrs[1]],
        SECRET,
        &["room/dave/tablet"],
    );
    let [a, b, c] = r.as_mut_slice() else {
        unreachable!()
    };
    converge(
        &mut [a, b, c],
        &["alice=web", "bob=ios", "dave=tablet"],
        Duration::from_secs(10),
    );
}

#[test]
fn a_graceful_shutdown_leaves_at_once() {
    let (mut r, _) = converged_cluster(
        [&["room/alice/web"], &["room/bob/ios"], &[]],
        &["alice=web", "bob=ios"],
    );
    let [a, b, c] = r.as_mut_slice() else {
        unreachable!()
    };
    b.send("quit");
    b.wait_for("bye", Duration::from_secs(5));
    let took = converge(&mut [a, c], &["alice=web"], Duration::from_secs(5));
    assert!(
        took < Duration::from_millis(2 * BROADCAST_MS),
        "took {took:?}"
    );
}

#[test]
fn a_process_with_the_wrong_secret_gets_nothing_and_changes_nothing() {
    let (mut r, addrs) = cluster([&["room/alice/web"], &[], &[]]);
    let stranger_addr = addresses(1)[0];
    let mut stranger = replica(
        "mallory",
        stranger_addr,
        &addrs,
        "a wrong cluster secret, also 32+ bytes",
        &["room/mallory/x"],
    );
    thread::sleep(Duration::from_millis(10 * BROADCAST_MS));
    let [a, b, c] = r.as_mut_slice() else {
        unreachable!()
    };
    converge(&mut [a, b, c], &["alice=web"], Duration::from_secs(5));
    assert_eq!(list(&mut stranger), sorted(&["mallory=x"]));
}

/// The TLS flags with the test certificates of the library.
fn tls_args() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls");
    [
        ("--tls-ca", "cluster-ca.pem"),
        ("--tls-cert", "cluster-node.pem"),
        ("--tls-key", "cluster-node.key"),
    ]
    .into_iter()
    .flat_map(|(flag, file)| [flag.to_string(), format!("{dir}/{file}")])
    .collect()
}

#[test]
fn replicas_on_tls_converge_and_a_replica_without_tls_gets_nothing() {
    let addrs = addresses(3);
    let tls = tls_args();
    let mut a = replica_with(
        "n0",
        addrs[0],
        &addrs[1..2],
        SECRET,
        &["room/alice/web"],
        &tls,
    );
    let mut b = replica_with("n1", addrs[1], &addrs[..1], SECRET, &["room/bob/ios"], &tls);
    // The right secret, but no TLS.
    let mut plain = replica("n2", addrs[2], &addrs[..2], SECRET, &["room/carol/x"]);
    converge(
        &mut [&mut a, &mut b],
        &["alice=web", "bob=ios"],
        Duration::from_secs(10),
    );
    thread::sleep(Duration::from_millis(10 * BROADCAST_MS));
    converge(
        &mut [&mut a, &mut b],
        &["alice=web", "bob=ios"],
        Duration::from_secs(1),
    );
    assert_eq!(list(&mut plain), sorted(&["carol=x"]));
}

#[test]
fn garbage_and_bad_frames_are_refused_and_the_replica_keeps_serving() {
    let (mut r, addrs) = cluster([&["room/alice/web"], &[], &[]]);
    let attempts: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0, 0, 0, 5, 1, 2],                // truncated frame
        vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0], // oversized length
        {
            // A hello frame of a future format version.
            let mut f = vec![0, 0, 0, 12];
            f.extend_from_slice(b"attn");
            f.extend_from_slice(&[99; 8]);
            f
        },
        (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
    ];
    for bytes in &attempts {
        if let Ok(mut s) = TcpStream::connect(addrs[0]) {
            let _ = s.write_all(bytes);
            let _ = s.flush();
        }
    }
    thread::sleep(Duration::from_millis(3 * BROADCAST_MS));
    let [a, b, c] = r.as_mut_slice() else {
        unreachable!()
    };
    b.send("track room bob ios");
    converge(
        &mut [a, b, c],
        &["alice=web", "bob=ios"],
        Duration::from_secs(10),
    );
}
