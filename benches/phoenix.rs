//! The Phoenix Channels layer under load (`cargo bench -p attendance-benches
//! --bench phoenix`), one run, printing:
//!
//! - `phoenix fanout sockets=N diffs=D cpu_us_per_socket_per_diff=X
//!   wall_ms_per_diff=W bytes_rendered_per_change=B renders_per_change=R`:
//!   one topic joined by N websockets on one replica (watch-only joins, so
//!   setting up is O(N); one tracked presence changes), one change per
//!   broadcast period, each timed until every client has received and
//!   parsed its `presence_diff`. The clients run in this process, over
//!   in-memory duplex streams (10,000 loopback sockets would need 20,000
//!   descriptors), on a runtime of their own: `cpu_us_per_socket_per_diff`
//!   is the CPU time of the replica's threads (tracker, endpoint, the
//!   server side of the streams) over sockets × diffs; `with_clients_us`
//!   the whole process's.
//!   Printed for 1,000 and 10,000 sockets: the bytes rendered per change
//!   must not grow with the socket count.
//! - `phoenix latency period_ms=100 samples=N median_ms=X p99_ms=Y max_ms=Z`:
//!   a track on replica A (TCP mesh on loopback) until a websocket client
//!   of replica B has parsed the `presence_diff` that lists it, tracks at
//!   random phases of the period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attendance::Tracker;
use attendance::protocol::Config;
use attendance::transport::MemoryNetwork;
use attendance_phoenix::{Connection, Endpoint, Join, Object, Policy, Refusal, UserParams};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type T = Tracker<Value>;

/// Joins with a `user` track; the others watch.
struct Watchers;

impl Policy<Value> for Watchers {
    fn join(&self, topic: &str, params: &Object, c: &Connection) -> Result<Join<Value>, Refusal> {
        if params.contains_key("user") {
            return UserParams.join(topic, params, c);
        }
        Ok(Join::watch())
    }
}

/// CPU time so far (user + system) of this process's threads whose name
/// starts with `prefix` (all of them for ""), from /proc.
fn cpu_time(prefix: &str) -> Duration {
    let mut ticks = 0;
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The thread's name is in parentheses and may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime: fields 14 and 15 of the line, 11 and 12 after
        // the name, in 1/100 s.
        ticks += field(11) + field(12);
    }
    Duration::from_millis(ticks * 10)
}

/// A websocket client over an in-memory stream to `router`, served on
/// `server`.
async fn duplex_client(
    server_runtime: &tokio::runtime::Handle,
    router: axum::Router,
) -> tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    server_runtime.spawn(async move {
        let service = TowerToHyperService::new(router);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service)
            .with_upgrades()
            .await;
    });
    let url = "ws://bench.invalid/socket/websocket?vsn=2.0.0";
    // The default read buffer (128 KiB) is zeroed on every read.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, client, Some(config))
        .await
        .expect("handshake");
    ws
}

/// Server threads are named so that their CPU time can be told apart.
const SERVER: &str = "phx-server";

async fn fanout(server: &tokio::runtime::Handle, sockets: usize, diffs: usize) {
    let network = MemoryNetwork::new();
    let tracker: T = {
        let _in_server = server.enter();
        Tracker::builder("a")
            .start_with(|id| network.join(id))
            .expect("starts")
    };
    let endpoint = Endpoint::builder(tracker.clone())
        .policy(Watchers)
        .build()
        .expect("builds");
    let router = endpoint.router();
    let guard = tracker
        .track("doc:1", "editor", json!({"rev": 0}))
        .expect("tracks");

    let parsed = Arc::new(AtomicUsize::new(0));
    let all_parsed = Arc::new(Notify::new());
    let mut joined = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let mut ws = duplex_client(server, router.clone()).await;
        ws.send(Message::text(r#"["1","1","doc:1","phx_join",{}]"#))
            .await
            .expect("sends");
        let (parsed, all_parsed) = (parsed.clone(), all_parsed.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        joined.push(ready_rx);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            while let Some(Ok(message)) = ws.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let frame: Value = serde_json::from_str(text.as_str()).expect("json");
                match frame[3].as_str() {
                    Some("presence_state") => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    Some("presence_diff")
                        if parsed.fetch_add(1, Ordering::AcqRel) + 1 == sockets =>
                    {
                        all_parsed.notify_one();
                    }
                    _ => {}
                }
            }
        });
    }
    for ready in joined {
        ready.await.expect("joined");
    }

    let period = Duration::from_millis(100);
    let before = endpoint.stats();
    let (cpu_start, server_start) = (cpu_time(""), cpu_time(SERVER));
    let mut wall = Duration::ZERO;
    for rev in 1..=diffs {
        parsed.store(0, Ordering::Release);
        let start = Instant::now();
        guard.update(json!({"rev": rev})).expect("updates");
        all_parsed.notified().await;
        let took = start.elapsed();
        wall += took;
        tokio::time::sleep(period.saturating_sub(took)).await;
    }
    let cpu = cpu_time("").saturating_sub(cpu_start);
    let server_cpu = cpu_time(SERVER).saturating_sub(server_start);
    let after = endpoint.stats();
    let renders = after.diffs_rendered - before.diffs_rendered;
    let bytes = after.diff_bytes_rendered - before.diff_bytes_rendered;
    let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / (sockets * diffs) as f64;
    println!(
        "phoenix fanout sockets={sockets} diffs={diffs} cpu_us_per_socket_per_diff={:.2} \
         with_clients_us={:.2} wall_ms_per_diff={:.1} bytes_rendered_per_change={} \
         renders_per_change={}",
        per(server_cpu),
        per(cpu),
        wall.as_secs_f64() * 1e3 / diffs as f64,
        bytes / diffs as u64,
        renders / diffs as u64,
    );
    tracker.shutdown().await;
}

async fn latency(samples: usize) {
    let period = Duration::from_millis(100);
    let config = Config::with_broadcast_period(period);
    let a: T = Tracker::builder("a")
        .config(config.clone())
        .listen("127.0.0.1:0".parse().expect("an address"))
        .secret("bench-secret-bench-secret-0123456789")
        .start()
        .await
        .expect("starts");
    let b: T = Tracker::builder("b")
        .config(config)
        .listen("127.0.0.1:0".parse().expect("an address"))
        .peer(a.local_addr().expect("listens"))
        .secret("bench-secret-bench-secret-0123456789")
        .start()
        .await
        .expect("starts");
    let endpoint = Endpoint::builder(b.clone())
        .policy(UserParams)
        .build()
        .expect("builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr: SocketAddr = listener.local_addr().expect("an address");
    tokio::spawn(axum::serve(listener, endpoint.router()).into_future());
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    ws.send(Message::text(
        r#"["1","1","doc:1","phx_join",{"user":"observer"}]"#,
    ))
    .await
    .expect("sends");
    // Linked when a's presences show on b.
    let probe = a.track("doc:1", "probe", json!({})).expect("tracks");
    while b.count("doc:1") < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(probe);

    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        // xorshift: a phase in the period for each track.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(rng % 100)).await;
        let key = format!("user:{i}");
        let start = Instant::now();
        let _guard = a.track("doc:1", &key, json!({})).expect("tracks");
        loop {
            let Some(Ok(Message::Text(text))) = ws.next().await else {
                panic!("the socket closed");
            };
            let frame: Value = serde_json::from_str(text.as_str()).expect("json");
            if frame[3] == "presence_diff" && frame[4]["joins"].get(&key).is_some() {
                break;
            }
        }
        took.push(start.elapsed());
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "phoenix latency period_ms=100 samples={samples} median_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    a.shutdown().await;
    b.shutdown().await;
}

fn main() {
    // The replica and its endpoint on one runtime, the clients on another.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER)
        .enable_all()
        .build()
        .expect("a runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("phx-client")
        .enable_all()
        .build()
        .expect("a runtime");
    // `-- fanout` or `-- latency` runs one part.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wants = |part: &str| only.as_deref().is_none_or(|o| o == part);
    runtime.block_on(async {
        if wants("fanout") {
            fanout(server.handle(), 1_000, 20).await;
            fanout(server.handle(), 10_000, 20).await;
        }
        if wants("latency") {
            latency(200).await;
        }
    });
}
