//! Runs Debian's `nats-server` for a test: on loopback, on a random port
//! it reports in a ports file, killed when dropped. The NATS benchmark
//! uses it too.

#![allow(dead_code)] // Each user takes its own share of it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server binary: `NATS_SERVER_BIN`, Debian's sbin copy, or `PATH`.
/// Missing, the test fails: it is never skipped.
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let sbin = ["/usr/sbin/nats-server", "/usr/local/sbin/nats-server"];
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect()
        })
        .unwrap_or_default();
    sbin.iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "cannot run nats-server: not in NATS_SERVER_BIN, /usr/sbin or PATH{}; \
                 `cargo xtask test` installs it (apt-get install -y nats-server)",
                if std::env::var("CI").as_deref() == Ok("true") {
                    " (CI=true: a missing server fails the tests)"
                } else {
                    ""
                }
            )
        })
}

/// A directory of its own for one server's files, removed on drop.
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "attendance-nats-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creates a scratch directory");
    dir
}

/// The URLs a server reported.
#[derive(Clone, Debug, Default)]
pub struct Ports {
    pub client: String,
    pub cluster: Option<String>,
    pub monitoring: Option<String>,
}

/// The first URL of `key` in a ports file's JSON.
fn first_url(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":[\""))? + key.len() + 5;
    let len = json[start..].find('"')?;
    Some(json[start..start + len].to_string())
}

pub struct NatsServer {
    child: Option<Child>,
    dir: PathBuf,
    args: Vec<String>,
    pub ports: Ports,
}

impl NatsServer {
    /// A server with these arguments besides `-a 127.0.0.1 -p -1`.
    pub fn start(args: &[&str]) -> Self {
        let dir = scratch_dir();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, ports) = spawn(&dir, "-1", &args);
        Self {
            child: Some(child),
            dir,
            args,
            ports,
        }
    }

    /// A server reading this configuration file as well.
    pub fn with_config(config: &str, args: &[&str]) -> Self {
        let dir = scratch_dir();
        let file = dir.join("server.conf");
        std::fs::write(&file, config).expect("writes the server configuration");
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["-c".to_string(), file.display().to_string()]);
        let (child, ports) = spawn(&dir, "-1", &args);
        Self {
            child: Some(child),
            dir,
            args,
            ports,
        }
    }

    pub fn url(&self) -> String {
        self.ports.client.clone()
    }

    pub fn cluster_url(&self) -> String {
        self.ports.cluster.clone().expect("started with --cluster")
    }

    /// Kills the server at once (SIGKILL: no goodbye to clients or routes).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same client port.
    pub fn restart(&mut self) {
        self.kill();
        let port = self
            .ports
            .client
            .rsplit(':')
            .next()
            .expect("a port")
            .to_string();
        let (child, ports) = spawn(&self.dir, &port, &self.args);
        self.child = Some(child);
        self.ports = ports;
    }

    /// The number of routes the server's monitoring endpoint lists.
    pub fn routes(&self) -> usize {
        let count = self.monitored("/routez", "num_routes");
        usize::try_from(count).expect("a route count")
    }

    /// A number from a monitoring endpoint (`/varz`, `/routez`, …).
    pub fn monitored(&self, endpoint: &str, field: &str) -> u64 {
        let url = self
            .ports
            .monitoring
            .as_deref()
            .expect("started with -m -1");
        let body = http_get(url, endpoint);
        let key = format!("\"{field}\":");
        let at = body
            .find(&key)
            .unwrap_or_else(|| panic!("{endpoint} has no {field}"));
        body[at + key.len()..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{endpoint}: {field} is not a number"))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(dir: &Path, port: &str, args: &[String]) -> (Child, Ports) {
    let log = std::fs::File::create(dir.join("server.log")).expect("creates the log");
    let bin = binary();
    let mut child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", port, "--ports_file_dir"])
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; `cargo xtask test` installs it (apt-get install -y nats-server)",
                bin.display()
            )
        });
    let ports_file = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The file is not written atomically: wait for its closing brace.
        if let Ok(json) = std::fs::read_to_string(&ports_file)
            && json.trim_end().ends_with('}')
        {
            let ports = Ports {
                client: first_url(&json, "nats").expect("a client URL"),
                cluster: first_url(&json, "cluster"),
                monitoring: first_url(&json, "monitoring"),
            };
            return (child, ports);
        }
        let log = || std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited ({status}) at start:\n{}", log());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nats-server wrote no ports file in 10 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A GET on loopback, the body as text.
fn http_get(base: &str, path: &str) -> String {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(host).expect("connects to the monitoring port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("sets a timeout");
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sends the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reads the response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}
