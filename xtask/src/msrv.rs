//! `cargo xtask msrv`: fails when a publishable crate of the workspace
//! declares a `rust-version` lower than what it needs: the largest
//! `rust-version` of any package in the resolved dependency graph (all
//! features, every target), and the first release of its edition.
//!
//! Written here rather than as a script so that it needs nothing but
//! cargo (a fresh machine has no `jq`).

use std::process::{Command, ExitCode};

use serde_json::Value;

/// A version as numbers: `1.85` and `1.85.0` compare equal.
fn parse(version: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(3, 0);
    parts
}

fn edition_minimum(edition: &str) -> Option<&'static str> {
    match edition {
        "2015" => Some("1.0"),
        "2018" => Some("1.31"),
        "2021" => Some("1.56"),
        "2024" => Some("1.85"),
        _ => None,
    }
}

pub(crate) fn check() -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--locked",
        ])
        .output();
    let metadata: Value = match output {
        Ok(o) if o.status.success() => match serde_json::from_slice(&o.stdout) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("xtask msrv: cargo metadata printed no JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
        Ok(o) => {
            eprintln!(
                "xtask msrv: cargo metadata failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("xtask msrv: cannot run cargo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let empty = Vec::new();
    let list = |v: &Value, field: &str| v[field].as_array().unwrap_or(&empty).clone();
    let resolved: Vec<Value> = list(&metadata["resolve"], "nodes")
        .iter()
        .map(|n| n["id"].clone())
        .collect();
    let members = list(&metadata, "workspace_members");
    let packages = list(&metadata, "packages");
    let text = |v: &Value, field: &str| v[field].as_str().unwrap_or("").to_string();

    // The largest rust-version among the resolved dependencies (the
    // workspace's own crates are what is checked), and who sets it.
    let Some((needed, needed_by)) = packages
        .iter()
        .filter(|p| resolved.contains(&p["id"]) && !members.contains(&p["id"]))
        .filter_map(|p| {
            let version = p["rust_version"].as_str()?;
            Some((
                version.to_string(),
                format!("{} {}", text(p, "name"), text(p, "version")),
            ))
        })
        .max_by_key(|(v, _)| parse(v))
    else {
        eprintln!("xtask msrv: no dependency declares a rust-version");
        return ExitCode::FAILURE;
    };

    let mut ok = true;
    let published = packages.iter().filter(|p| {
        members.contains(&p["id"]) && p["publish"].as_array().is_none_or(|a| !a.is_empty())
    });
    for package in published {
        let (name, edition) = (text(package, "name"), text(package, "edition"));
        let Some(floor) = edition_minimum(&edition) else {
            eprintln!("{name}: unknown edition {edition}");
            ok = false;
            continue;
        };
        match package["rust_version"].as_str() {
            None => {
                eprintln!("{name}: no rust-version (needs {needed}, for {needed_by})");
                ok = false;
            }
            Some(declared) if parse(declared) < parse(&needed) => {
                eprintln!(
                    "{name}: rust-version {declared} is below {needed} (needed by {needed_by})"
                );
                ok = false;
            }
            Some(declared) if parse(declared) < parse(floor) => {
                eprintln!("{name}: rust-version {declared} is below {floor} (edition {edition})");
                ok = false;
            }
            Some(declared) => println!(
                "{name}: rust-version {declared} (dependencies need {needed}, for {needed_by}; \
                 edition {edition} needs {floor})"
            ),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
