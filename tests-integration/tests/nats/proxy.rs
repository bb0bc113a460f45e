//! A TCP proxy a test can cut: it forwards to a target set once known,
//! and when cut drops every connection and every new one until healed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    /// `true` while cut; every connection watches it.
    cut: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port; forwards nothing until
    /// [`Proxy::forward_to`].
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        let target = Arc::new(Mutex::new(None));
        let (cut, _) = watch::channel(false);
        let proxy = Self { addr, target, cut };
        let target = Arc::clone(&proxy.target);
        let cut = proxy.cut.subscribe();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let to = *target.lock().expect("not poisoned");
                let (Some(to), false) = (to, *cut.borrow()) else {
                    continue; // dropped: the connection closes
                };
                let mut cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn forward_to(&self, target: &str) {
        let addr = target
            .trim_start_matches("nats://")
            .parse()
            .expect("a socket address");
        *self.target.lock().expect("not poisoned") = Some(addr);
    }

    /// Closes every connection through it and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}
