//! A replica of the demo for browser tests: a `Tracker<Value>` on a
//! loopback mesh port, and the node's demo router (the Phoenix Channels
//! endpoint and the page) on a loopback HTTP port. Each replica runs on a
//! runtime of its own, so that stopping it is a crash: its tasks and
//! sockets end at once, with no goodbye to its peers or its browsers.

#![allow(dead_code)] // Each test takes its own share of it.

use std::net::SocketAddr;
use std::time::Duration;

use attendance::Tracker;
use attendance::protocol::Config;
use serde_json::Value;
use tokio::runtime::Runtime;

const SECRET: &str = "the secret of the browser tests' cluster, 32+ bytes";
/// The broadcast period; the other periods scale with it.
const PERIOD: Duration = Duration::from_millis(50);

pub struct Replica {
    runtime: Option<Runtime>,
    pub tracker: Tracker<Value>,
    /// Where peers reach it.
    pub mesh: SocketAddr,
    /// Where browsers reach it.
    pub http: SocketAddr,
}

impl Replica {
    /// Starts replica `name` on free ports, dialing `peers`.
    pub async fn start(name: &str, peers: &[SocketAddr]) -> Replica {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_on(name, any, any, peers).await
    }

    /// Starts replica `name` on these ports (a restart reuses them).
    pub async fn start_on(
        name: &str,
        mesh: SocketAddr,
        http: SocketAddr,
        peers: &[SocketAddr],
    ) -> Replica {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let (name, peers) = (name.to_string(), peers.to_vec());
        let (tracker, mesh, http) = runtime
            .spawn(async move {
                let tracker: Tracker<Value> = Tracker::builder(&name)
                    .config(Config::with_broadcast_period(PERIOD))
                    .listen(mesh)
                    .peers(peers)
                    .secret(SECRET)
                    .start()
                    .await
                    .unwrap_or_else(|e| panic!("{name} starts: {e}"));
                let mesh = tracker.local_addr().expect("a mesh address");
                let router = attendance_node::demo_router(tracker.clone()).expect("a router");
                let listener = tokio::net::TcpListener::bind(http)
                    .await
                    .unwrap_or_else(|e| panic!("{name} binds {http}: {e}"));
                let http = listener.local_addr().expect("an HTTP address");
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                tokio::spawn(async move { axum::serve(listener, service).await });
                (tracker, mesh, http)
            })
            .await
            .expect("the replica starts");
        Replica {
            runtime: Some(runtime),
            tracker,
            mesh,
            http,
        }
    }

    /// The page of document `doc` for `user`, with a short heartbeat.
    pub fn url(&self, doc: &str, user: &str) -> String {
        format!("http://{}/doc/{doc}?user={user}&heartbeat=500", self.http)
    }

    /// The websocket endpoint phoenix.js builds from `/socket`.
    pub fn socket(&self) -> String {
        format!("ws://{}/socket", self.http)
    }

    /// Stops it as a crash would: no goodbye to peers or browsers.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}
