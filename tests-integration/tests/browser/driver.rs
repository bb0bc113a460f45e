//! Debian's `chromium`, headless, driven over W3C WebDriver: a
//! `chromedriver` child on a free loopback port, one browser process a
//! [`Browser`]. Missing, either program fails the test with a message
//! naming `cargo xtask test`, which installs both.

#![allow(dead_code)] // Each test takes its own share of it.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long a condition on a page may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How often a page is asked again.
const POLL: Duration = Duration::from_millis(25);

/// `program` from `env` (a path), one of `places`, or the `PATH`; a
/// missing one fails the test, under `CI=true` as anywhere else.
fn find(program: &str, env: &str, places: &[&str], package: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env) {
        return bin.into();
    }
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).collect())
        .unwrap_or_default();
    places
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "cannot run {program}: not in {env}, {} or PATH; the browser tests need it: \
                 `cargo xtask test` installs it (apt-get install -y {package})",
                places.join(", ")
            )
        })
}

/// A running `chromedriver`; it and the browsers it started are killed
/// when this is dropped.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts `chromedriver` and waits until it accepts connections.
    pub fn start() -> Driver {
        find(
            "chromium",
            "CHROMIUM_BIN",
            &["/usr/bin/chromium"],
            "chromium",
        );
        let bin = find(
            "chromedriver",
            "CHROMEDRIVER_BIN",
            &["/usr/bin/chromedriver"],
            "chromium-driver",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that dropping it also ends the
            // browsers it started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; `cargo xtask test` installs it \
                     (apt-get install -y chromium-driver)",
                    bin.display()
                )
            });
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("chromedriver exited ({status}) at start");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen in time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new headless browser (its own chromium process).
    pub async fn browser(&self) -> Browser {
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=560,420",
            ] }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start chromium: {e}; \
                     `cargo xtask test` installs it (apt-get install -y chromium)"
                )
            });
        Browser { client }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every chromium it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window, showing a page.
pub struct Browser {
    client: Client,
}

impl Browser {
    /// Loads `url`.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The value of `script` (a function body: `return ...`) on the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Asks `script` until `done` holds of its value, which it returns;
    /// fails after [`DEADLINE`] with the last value seen.
    pub async fn until(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.eval(script).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}; last seen: {value}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("a screenshot")
    }

    /// Ends the browser (its websockets close with it).
    pub async fn close(self) {
        self.client.close().await.expect("the browser closes");
    }

    /// The WebDriver client, for what this wrapper does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
