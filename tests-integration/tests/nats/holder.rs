//! A requester whose catch-up holder is killed asks another holder within
//! a period: the protocol node is driven by the test over a real NATS
//! transport, so that the test can hold its request back and kill the
//! holder first.

use super::*;

/// A protocol node driven over a NATS transport by the test itself, so
/// that the test sees each message before it goes: the requester of the
/// holder test.
struct Driven {
    node: Node<String>,
    transport: NatsTransport,
    origin: Instant,
    /// Messages from this replica are dropped, as across a cut route.
    deaf_to: &'static str,
    /// The first catch-up request sent once `deaf_to` is known here (it
    /// asks for its presences) is handed to the test, not sent.
    intercept: bool,
    /// Peers reported lost, and when.
    lost: Vec<(ReplicaId, Instant)>,
}

impl Driven {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Runs the node on its transport until `done` holds (true) or
    /// `within` has passed (false); with `intercept` set, returns the
    /// request it intercepts instead of sending it.
    async fn run(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> (bool, Option<Transmit>) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(t) = self.node.poll_transmit() {
                let knows = self
                    .node
                    .replicas()
                    .any(|(id, _)| id.name().as_str() == self.deaf_to);
                if self.intercept && knows && t.kind == MessageKind::CatchUpRequest {
                    self.intercept = false;
                    return (false, Some(t));
                }
                self.transport.send(&t.destination, t.bytes.into());
            }
            if done(self) {
                return (true, None);
            }
            let wake = tokio::time::Instant::from_std(self.origin + self.node.poll_timeout());
            tokio::select! {
                event = self.transport.recv() => {
                    let now = self.now();
                    match event.expect("the transport runs") {
                        TransportEvent::Connected(peer) => self.node.peer_connected(now, peer),
                        TransportEvent::Message { from, bytes }
                            if from.name().as_str() != self.deaf_to =>
                        {
                            let _ = self.node.handle_message(now, &from, &bytes);
                        }
                        TransportEvent::LinkLost(peer) => {
                            self.lost.push((peer.clone(), Instant::now()));
                            self.node.link_lost(now, &peer);
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(wake.min(deadline)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return (false, None);
                    }
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
            }
        }
    }

    fn keys(&self) -> BTreeSet<String> {
        self.node
            .state()
            .list("room")
            .into_iter()
            .map(|g| g.key.to_string())
            .collect()
    }
}

/// The period of the holder test: long enough that a few message delays
/// on a busy machine stay well inside it, and that waiting for relays
/// (a period or two) does not.
const HOLDER_PERIOD: Duration = Duration::from_millis(1000);

async fn start_holder(name: &str, url: &str) -> T {
    Tracker::builder(name)
        .config(Config::with_broadcast_period(HOLDER_PERIOD))
        .nats(nats(&[url.to_string()]))
        .start()
        .await
        .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

/// A tracker whose connection to the server goes through a proxy, so that
/// cutting the proxy kills it abruptly: no goodbye, its subscriptions gone.
async fn behind_proxy(name: &str, url: &str) -> (T, Proxy) {
    let proxy = Proxy::start().await;
    proxy.forward_to(url);
    (start_holder(name, &proxy.url()).await, proxy)
}

/// Waits until a request to `name`'s catch-up subject finds no responders:
/// the server has dropped its subscriptions.
async fn until_gone(client: &async_nats::Client, name: &str) {
    let subject = format!(
        "attendance.test.rpc.{}.watcher",
        subject_token(&ReplicaName::new(name).expect("a name"))
    );
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} stays subscribed"
        );
        let request = async_nats::Request::new()
            .payload(Vec::new().into())
            .timeout(Some(Duration::from_millis(50)));
        match client.send_request(subject.clone(), request).await {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => return,
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_whose_holder_is_killed_asks_another_holder_within_a_period() {
    let server = NatsServer::start(&[]);
    let url = server.url();
    let (a, proxy_a) = behind_proxy("a", &url).await;
    let (y, proxy_y) = behind_proxy("y", &url).await;
    let b = start_holder("b", &url).await;
    let _g = [track(&a, "alice"), track(&y, "yves"), track(&b, "bob")];
    until_all_list(
        "a, y and b converge",
        Duration::from_secs(10),
        &[&a, &y, &b],
        &["alice", "bob", "yves"],
    )
    .await;

    // The requester cannot hear b: b's presences reach it only through a
    // holder, a or y, which the answer to its digest names.
    let me = id("requester");
    let config = Config::with_broadcast_period(HOLDER_PERIOD);
    let node = Node::new(State::new(me.clone()), config).expect("valid");
    let transport = NatsTransport::connect(nats(std::slice::from_ref(&url)), me)
        .await
        .expect("connects");
    let mut requester = Driven {
        node,
        transport,
        origin: Instant::now(),
        deaf_to: "b",
        intercept: true,
        lost: Vec::new(),
    };
    let (_, request) = requester.run(Duration::from_secs(10), |_| false).await;
    let request = request.expect("the requester asks a holder");
    let Destination::Replica(holder) = request.destination.clone() else {
        panic!("a request goes to one holder");
    };
    let (killed, survivor, proxy, key) = match holder.name().as_str() {
        "a" => (a, y, proxy_a, "yves"),
        "y" => (y, a, proxy_y, "alice"),
        other => panic!("asked {other}, which it cannot hear"),
    };

    // The holder dies before the request reaches it.
    proxy.cut();
    let watcher = async_nats::connect(url.as_str()).await.expect("connects");
    until_gone(&watcher, holder.name().as_str()).await;
    requester
        .transport
        .send(&request.destination, request.bytes.into());
    let (converged, _) = requester
        .run(Duration::from_secs(10), |r| {
            let keys = r.keys();
            !r.lost.is_empty() && keys.contains("bob") && keys.contains(key)
        })
        .await;
    assert!(
        converged,
        "the requester never listed b's presences: {:?}",
        requester.keys()
    );
    let (lost, at) = requester.lost[0].clone();
    assert_eq!(lost, holder, "no responders: the holder is reported lost");
    let took = at.elapsed();
    eprintln!("holder killed: the requester listed b's presences {took:?} after the report");
    assert!(
        took < HOLDER_PERIOD,
        "within a period of the report: {took:?}"
    );
    assert!(requester.transport.stats().no_responders >= 1);
    drop(killed);
    requester.transport.close().await;
    shutdown(&[&survivor, &b]).await;
}
