//! An `attendance-node` process driven through its standard input and
//! output, shared by the multi-process tests and the end-to-end bench.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// A running replica process; killed when dropped.
pub struct Replica {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Replica {
    /// Starts `attendance-node` with `args` and waits until it is ready.
    pub fn start(args: &[String]) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_attendance-node"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the node binary starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let replica = Replica {
            child,
            stdin,
            lines,
        };
        replica.wait_for("ready", Duration::from_secs(10));
        replica
    }

    /// The next line starting with `prefix`, skipping others.
    pub fn wait_for(&self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line starting with {prefix:?} in {limit:?}"),
            }
        }
    }

    /// Sends one command line.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("the replica reads commands");
    }

    /// Sends a command and returns its answer, the line starting with
    /// `prefix`.
    pub fn ask(&mut self, command: &str, prefix: &str) -> String {
        self.send(command);
        self.wait_for(prefix, Duration::from_secs(60))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of a replica on the TCP mesh: its name, address, peers,
/// cluster secret and broadcast period.
pub fn mesh_args(
    name: &str,
    listen: SocketAddr,
    peers: &[SocketAddr],
    secret: &str,
    broadcast_ms: u64,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--name",
        name,
        "--listen",
        &listen.to_string(),
        "--secret",
        secret,
        "--broadcast-ms",
        &broadcast_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in peers {
        args.extend(["--peer".into(), p.to_string()]);
    }
    args
}

/// Free loopback addresses to listen on.
pub fn addresses(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound"))
        .collect()
}
