//! The binary's own help and version, as a user reads them.

use std::process::Command;

fn run(arg: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_attendance-node"))
        .arg(arg)
        .output()
        .expect("the node binary runs");
    assert!(out.status.success(), "{arg} failed: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn help_lists_the_stdin_commands_and_rust_log() {
    let help = run("--help");
    for command in [
        "track <topic> <key> <meta>",
        "untrack <topic> <key>",
        "update <topic> <key> <meta>",
        "list <topic>",
        "count <topic>",
        "bulk <topic> <n> <meta>",
        "metrics",
        "quit",
    ] {
        assert!(help.contains(command), "--help lacks `{command}`:\n{help}");
    }
    assert!(help.contains("RUST_LOG"), "--help lacks RUST_LOG:\n{help}");
    assert!(help.contains("--name"), "--help lacks the options:\n{help}");
}

#[test]
fn version_names_the_crate_and_the_wire_versions() {
    let supported = attendance::wire::Versions::SUPPORTED;
    let wire = format!("reads versions {supported},");
    for arg in ["--version", "-V"] {
        let version = run(arg);
        assert!(
            version.starts_with(&format!("attendance-node {}\n", env!("CARGO_PKG_VERSION"))),
            "{arg}: {version}"
        );
        assert!(version.contains(&wire), "{arg} lacks `{wire}`: {version}");
    }
    assert!(supported.contains(attendance::wire::VERSION));
}
