//! Phoenix Presence in the browser, served by three replicas.
//!
//! ```text
//! cargo run --release -p attendance-node --example phoenix_demo
//! ```
//!
//! Starts itself three times as a replica (three OS processes linked by
//! authenticated TCP on loopback), each serving the Phoenix Channels
//! endpoint and the demo page, as `attendance-node --phoenix ADDR` does,
//! and prints a page address per replica. Open two of them, on two
//! replicas: both list the same viewers, with one entry a user and a tab
//! count. Ctrl-C stops them all.

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use attendance::Tracker;
use attendance::protocol::Config;
use serde_json::Value;

const SECRET: &str = "attendance demo secret: 32 bytes or more";
const REPLICAS: usize = 3;
const USERS: [&str; REPLICAS] = ["alice", "bob", "carol"];

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name, peers] = args.as_slice()
        && flag == "--replica"
    {
        return replica(name, peers);
    }
    coordinator()
}

/// Starts the replicas, prints their pages, waits for Ctrl-C.
fn coordinator() -> Result<(), Box<dyn Error>> {
    let mut children: Vec<Child> = Vec::new();
    let mut meshes: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--replica")
            .arg(format!("node-{}", i + 1))
            .arg(meshes.join(","))
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        children.push(child);
        // "ready <mesh address> <HTTP address>"
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let [_, mesh, http] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            return Err(format!("replica node-{} did not start", i + 1).into());
        };
        meshes.push(mesh.to_string());
        pages.push(format!("node-{}: http://{http}/doc/1?user={user}", i + 1));
    }
    println!("{REPLICAS} replicas of doc:1, one page each (open two, on two replicas):");
    for page in &pages {
        println!("  {page}");
    }
    println!("The same user in two tabs shows once, with 2 tabs. Ctrl-C stops.");
    // Ctrl-C reaches the replicas too (one process group); wait for them.
    for mut child in children {
        child.wait()?;
    }
    Ok(())
}

/// One replica: a tracker dialing `peers`, and the demo, both on free
/// loopback ports it prints.
#[tokio::main]
async fn replica(name: &str, peers: &str) -> Result<(), Box<dyn Error>> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let peers: Vec<SocketAddr> = peers
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let tracker: Tracker<Value> = Tracker::builder(name)
        .config(Config::with_broadcast_period(
            std::time::Duration::from_millis(200),
        ))
        .listen(loopback)
        .peers(peers)
        .secret(SECRET)
        .start()
        .await?;
    let router = attendance_node::demo_router(tracker.clone())?;
    let listener = tokio::net::TcpListener::bind(loopback).await?;
    let mesh = tracker.local_addr().ok_or("no mesh address")?;
    println!("ready {mesh} {}", listener.local_addr()?);
    let serve = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::select! {
        served = serve => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    // Peers drop this replica's viewers at once.
    tracker.shutdown().await;
    Ok(())
}
