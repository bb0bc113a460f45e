//! A real cluster on this machine: three replicas as three OS processes
//! talking authenticated TCP on loopback.
//!
//! ```text
//! cargo run --release --example cluster
//! ```
//!
//! The example starts itself three times as a replica (with `--replica`),
//! tracks users on each, and prints the list of `room:lobby` as every
//! replica sees it. Then it kills one replica with SIGKILL: its users leave
//! everywhere once the others' transports notice the lost link. Then it
//! restarts that replica (a new incarnation on the same port): its users
//! come back. Every step prints how long it took.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use attendance::protocol::Config;
use attendance::{PresenceGuard, SubscriptionEvent, Tracker};

const TOPIC: &str = "room:lobby";
const SECRET: &str = "attendance demo secret: 32 bytes or more";
const BROADCAST_MS: u64 = 200;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--replica") {
        return replica(&args[2..]);
    }
    coordinator()
}

// --- the coordinator: starts, watches and kills the replicas -------------

/// A replica process and the lines it prints.
struct Process {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Process {
    fn start(
        name: &str,
        listen: SocketAddr,
        peers: &[SocketAddr],
        users: &[&str],
    ) -> Result<Self, Box<dyn Error>> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--replica")
            .arg(name)
            .arg(listen.to_string())
            .arg(
                peers
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg(users.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let process = Process {
            name: name.to_string(),
            child,
            stdin,
            lines,
        };
        process.wait_for(|l| l.starts_with("ready"), Duration::from_secs(10))?;
        Ok(process)
    }

    /// Waits for a line matching `wanted`, echoing the replica's events.
    fn wait_for(
        &self,
        wanted: impl Fn(&str) -> bool,
        limit: Duration,
    ) -> Result<String, Box<dyn Error>> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("{} did not answer in time", self.name))?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// The users listed on `TOPIC` by this replica.
    fn list(&mut self) -> Result<Vec<String>, Box<dyn Error>> {
        writeln!(self.stdin, "list")?;
        let line = self.wait_for(|l| l.starts_with("list "), Duration::from_secs(5))?;
        let mut users: Vec<String> = line
            .trim_start_matches("list ")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        users.sort();
        Ok(users)
    }
}

/// Free loopback ports for the replicas to listen on.
fn free_addresses(n: usize) -> Result<Vec<SocketAddr>, Box<dyn Error>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    Ok(listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()?)
}

/// Polls every process's list until all show `expected`; how long it took.
fn until_all_list(
    processes: &mut [&mut Process],
    expected: &[&str],
    limit: Duration,
) -> Result<Duration, Box<dyn Error>> {
    let start = Instant::now();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    loop {
        let mut all = true;
        for p in processes.iter_mut() {
            if p.list()? != expected {
                all = false;
            }
        }
        if all {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(format!("the replicas did not converge on {expected:?}").into());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn show(processes: &mut [&mut Process]) -> Result<(), Box<dyn Error>> {
    for p in processes.iter_mut() {
        let users = p.list()?;
        println!("  {} lists {TOPIC}: {}", p.name, users.join(", "));
    }
    Ok(())
}

fn coordinator() -> Result<(), Box<dyn Error>> {
    let config = Config::with_broadcast_period(Duration::from_millis(BROADCAST_MS));
    println!(
        "3 replicas as 3 processes on loopback TCP; broadcast every {:?}, down after {:?} \
         without a sign of life, or 3 periods after a lost link",
        config.broadcast_period, config.down_period
    );
    println!("each list reads user=replica: who is present, and which replica tracks them");
    let addrs = free_addresses(3)?;
    let names = ["node-1", "node-2", "node-3"];
    let users: [&[&str]; 3] = [&["alice"], &["bob", "carol"], &["dave"]];
    let mut procs = Vec::new();
    for i in 0..3 {
        let peers: Vec<SocketAddr> = (0..3).filter(|&j| j != i).map(|j| addrs[j]).collect();
        procs.push(Process::start(names[i], addrs[i], &peers, users[i])?);
        println!(
            "started {} on {} (pid {})",
            names[i],
            addrs[i],
            procs[i].child.id()
        );
    }
    let everyone = ["alice=node-1", "bob=node-2", "carol=node-2", "dave=node-3"];
    let [p1, p2, p3] = procs.as_mut_slice() else {
        return Err("three processes".into());
    };

    let took = until_all_list(&mut [p1, p2, p3], &everyone, Duration::from_secs(20))?;
    println!("\nall replicas list everyone after {took:?}:");
    show(&mut [p1, p2, p3])?;

    println!("\nkilling node-3 (SIGKILL)");
    p3.child.kill()?;
    let _ = p3.child.wait();
    let killed = Instant::now();
    let rest = ["alice=node-1", "bob=node-2", "carol=node-2"];
    until_all_list(&mut [p1, p2], &rest, Duration::from_secs(20))?;
    println!(
        "node-3's users left node-1 and node-2 {:?} after the kill:",
        killed.elapsed()
    );
    show(&mut [p1, p2])?;

    println!("\nrestarting node-3 on {} as a new incarnation", addrs[2]);
    let restarted = Instant::now();
    *p3 = Process::start(names[2], addrs[2], &[addrs[0], addrs[1]], users[2])?;
    let took = until_all_list(&mut [p1, p2, p3], &everyone, Duration::from_secs(20))?;
    println!(
        "node-3's users are back everywhere {:?} after the restart ({took:?} after it was ready):",
        restarted.elapsed()
    );
    show(&mut [p1, p2, p3])?;

    for p in [p1, p2, p3] {
        writeln!(p.stdin, "quit")?;
        let _ = p.child.wait();
    }
    println!("\nconverged: yes");
    Ok(())
}

// --- a replica process ------------------------------------------------

/// `--replica NAME LISTEN PEERS USERS`: runs one tracker, tracks the users
/// with its name as meta, and answers `list` and `quit` on stdin.
fn replica(args: &[String]) -> Result<(), Box<dyn Error>> {
    let [name, listen, peers, users] = args else {
        return Err("usage: cluster --replica NAME LISTEN PEERS USERS".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let peers: Vec<SocketAddr> = peers
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tracker: Tracker<String> = Tracker::builder(name)
            .listen(listen)
            .peers(peers)
            .secret(SECRET)
            .config(Config::with_broadcast_period(Duration::from_millis(
                BROADCAST_MS,
            )))
            .start()
            .await?;
        let guards: Vec<PresenceGuard<String>> = users
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|u| tracker.track(TOPIC, u, name.clone()))
            .collect::<Result<_, _>>()?;
        let mut sub = tracker.subscribe(TOPIC);
        tokio::spawn(async move {
            // Keep the subscription drained; the coordinator polls lists.
            while let Some(SubscriptionEvent::Diff(_) | SubscriptionEvent::Resync(_)) =
                sub.next().await
            {}
        });
        println!("ready {}", tracker.id());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            match line.trim() {
                "list" => {
                    let rows: Vec<String> = tracker
                        .list(TOPIC)
                        .iter()
                        .flat_map(|g| {
                            g.presences
                                .iter()
                                .map(move |p| format!("{}={}", g.key, p.meta()))
                        })
                        .collect();
                    println!("list {}", rows.join(","));
                }
                "quit" => break,
                _ => {}
            }
        }
        drop(guards);
        tracker.shutdown().await;
        Ok::<(), Box<dyn Error>>(())
    })
}
