//! Project tasks, run as `cargo xtask <task>`.
//!
//! `cargo xtask test [ARGS]` makes sure the programs the tests start are
//! installed (Debian's `nats-server`, and `chromium` with its
//! `chromedriver` for the browser tests), installing them with `apt-get` when
//! missing, then runs `cargo test --workspace --release [ARGS]`. The tests
//! themselves never install anything: a test that finds a program missing
//! fails with a message naming this command.
//!
//! `cargo xtask msrv` checks each published crate's `rust-version` against
//! its dependencies' and its edition's.

mod msrv;

use std::path::Path;
use std::process::{Command, ExitCode};

/// A program the tests start, and the Debian package that brings it.
struct Needed {
    program: &'static str,
    /// Where Debian installs it, for when that is not on the `PATH`.
    installed_at: &'static str,
    package: &'static str,
}

const NEEDED: &[Needed] = &[
    Needed {
        program: "nats-server",
        installed_at: "/usr/sbin/nats-server",
        package: "nats-server",
    },
    Needed {
        program: "chromium",
        installed_at: "/usr/bin/chromium",
        package: "chromium",
    },
    Needed {
        program: "chromedriver",
        installed_at: "/usr/bin/chromedriver",
        package: "chromium-driver",
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("msrv") => msrv::check(),
        _ => {
            eprintln!("usage: cargo xtask test [ARGS for cargo test] | cargo xtask msrv");
            ExitCode::from(2)
        }
    }
}

fn test(args: &[String]) -> ExitCode {
    let missing: Vec<&Needed> = NEEDED.iter().filter(|n| !present(n)).collect();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
        if let Err(e) = install(&packages) {
            eprintln!(
                "xtask: could not install {} ({e}); install {} by hand and run again",
                packages.join(", "),
                packages.join(" ")
            );
            return ExitCode::FAILURE;
        }
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--workspace", "--release"])
        .args(args)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn present(needed: &Needed) -> bool {
    Path::new(needed.installed_at).exists()
        || Command::new("sh")
            .args(["-c", &format!("command -v {}", needed.program)])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// `apt-get update` then `apt-get install -y`, through `sudo` unless this
/// already runs as root.
fn install(packages: &[&str]) -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        eprintln!("xtask: apt-get {}", args.join(" "));
        match command.args(args).status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("apt-get {} exited with {s}", args.join(" "))),
            Err(e) => Err(format!("apt-get: {e}")),
        }
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    apt(&install)
}
