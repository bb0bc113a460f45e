//! Trackers on the in-memory network with a 100 ms broadcast period, for
//! tests on tokio's paused clock.

use std::time::Duration;

use attendance::Tracker;
use attendance::protocol::Config;
use attendance::transport::MemoryNetwork;

pub type T = Tracker<String>;

pub fn config() -> Config {
    Config::with_broadcast_period(Duration::from_millis(100))
}

pub fn start(network: &MemoryNetwork, name: &str) -> T {
    Tracker::builder(name)
        .config(config())
        .start_with(|id| network.join(id))
        .expect("starts")
}

pub async fn periods(n: u32) {
    tokio::time::sleep(config().broadcast_period * n).await;
}
