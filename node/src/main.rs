//! One attendance replica, run from the command line.
//!
//! ```text
//! attendance-node --name n1 --listen 127.0.0.1:4001 \
//!     --peer 127.0.0.1:4002 --peer 127.0.0.1:4003 \
//!     --secret-env ATTENDANCE_SECRET --topic room:lobby --track room:lobby/alice/web
//! ```
//!
//! It prints one line per event on the subscribed topics and per replica
//! coming or going, and reads commands on standard input, one per line:
//!
//! ```text
//! track <topic> <key> <meta>     untrack <topic> <key>     update <topic> <key> <meta>
//! list <topic>                   count <topic>             quit
//! bulk <topic> <n> <meta>        (tracks keys user:0 .. user:<n-1>)
//! metrics                        (messages and bytes received, all kinds)
//! ```
//!
//! `quit`, end of input, or Ctrl-C leaves the cluster gracefully.
//! `--metrics ADDR` serves the replica's metrics to Prometheus over HTTP.
//!
//! With `--phoenix ADDR` it also serves browsers: the Phoenix Channels
//! endpoint the unmodified phoenix.js connects to
//! (`ws://ADDR/socket/websocket`, JSON metas), and a demo page,
//! `http://ADDR/doc/<id>?user=<name>`, listing who views document `<id>`
//! on any replica of the cluster.
//!
//! With `--nats URL` (repeat it for the nodes of a NATS cluster) the
//! replica meets its peers on a NATS broker instead of the mesh, and needs
//! no `--listen` or `--peer`:
//!
//! ```text
//! attendance-node --name n1 --nats nats://10.0.0.5:4222 --nats nats://10.0.0.6:4222 \
//!     --nats-user n1 --nats-password-env NATS_PASSWORD --secret-env ATTENDANCE_SECRET
//! ```
//!
//! The broker credentials are `--nats-user` with `--nats-password-env`,
//! `--nats-token-env`, `--nats-nkey-env` (an NKey seed) or `--nats-creds`
//! (a `.creds` file); `--nats-tls-ca`, `--nats-tls-cert` and
//! `--nats-tls-key` set up TLS to the server. The cluster secret keys a MAC
//! on every message; `--nats-no-mac` turns it off and trusts the broker's
//! permissions alone.
//!
//! With `--tls-ca`, `--tls-cert` and `--tls-key` (PEM files), links are
//! encrypted with mutual TLS: this replica presents its certificate and
//! accepts only peers whose certificates the authority signed. Every
//! replica of the cluster must then use TLS. With `--tls-replica-names`
//! too, a peer's certificate must name the replica it claims to be (a DNS
//! name equal to its `--name`), so a member can only speak as itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Duration;

use attendance::protocol::{Config, MessageKind};
use attendance::transport::nats::{NatsAuth, NatsConfig, NatsTls};
use attendance::transport::tls::TlsConfig;
use attendance::{PresenceGuard, SubscriptionEvent, Tracker, wire};
use clap::Parser;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// What `--help` shows after the options.
const AFTER_HELP: &str = "\
Commands on standard input, one a line:
  track <topic> <key> <meta>    track a presence (again: one more for the key)
  untrack <topic> <key>         untrack this node's presences under the key
  update <topic> <key> <meta>   change their meta
  list <topic>                  print the topic's presences as key=meta
  count <topic>                 print how many presences the topic has
  bulk <topic> <n> <meta>       track keys user:0 .. user:<n-1>
  metrics                       print the messages and bytes received
  quit                          leave the cluster (so do end of input and Ctrl-C)

Environment:
  RUST_LOG    what to log on standard error (default: warn), in tracing's
              filter syntax, e.g. RUST_LOG=info or RUST_LOG=attendance=debug";

/// The crate version, and the wire format versions this build speaks.
fn version() -> &'static str {
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "{}\nwire format: reads versions {}, writes the newest a peer reads too",
            env!("CARGO_PKG_VERSION"),
            wire::Versions::SUPPORTED,
        )
    });
    &TEXT
}
/// The guards of the presences tracked from the command line, by topic and key.
type Guards = HashMap<(String, String), Vec<PresenceGuard<Value>>>;

/// Runs one replica of an attendance cluster and prints what it sees.
#[derive(Parser, Debug)]
#[command(version = version(), after_help = AFTER_HELP)]
struct Args {
    /// The replica's name, unique in the cluster.
    #[arg(long)]
    name: String,
    /// The address to accept peers on (the TCP mesh).
    #[arg(long, required_unless_present = "nats", conflicts_with = "nats")]
    listen: Option<SocketAddr>,
    /// A peer's address; repeat for several.
    #[arg(long = "peer", conflicts_with = "nats")]
    peers: Vec<SocketAddr>,
    /// A NATS server URL to meet peers on instead of the mesh; repeat for
    /// the nodes of a NATS cluster.
    #[arg(long = "nats", value_name = "URL")]
    nats: Vec<String>,
    /// The NATS user (with --nats-password-env).
    #[arg(long, requires_all = ["nats", "nats_password_env"])]
    nats_user: Option<String>,
    /// The environment variable holding the NATS user's password.
    #[arg(long, requires = "nats_user")]
    nats_password_env: Option<String>,
    /// The environment variable holding a NATS token.
    #[arg(long, requires = "nats", conflicts_with_all = ["nats_user", "nats_nkey_env", "nats_creds"])]
    nats_token_env: Option<String>,
    /// The environment variable holding an NKey seed (SU…).
    #[arg(long, requires = "nats", conflicts_with_all = ["nats_user", "nats_creds"])]
    nats_nkey_env: Option<String>,
    /// A NATS credentials file (user JWT and NKey seed).
    #[arg(long, requires = "nats", conflicts_with = "nats_user")]
    nats_creds: Option<PathBuf>,
    /// Certificate authorities (PEM) to trust for TLS to the NATS server;
    /// also turns TLS on.
    #[arg(long, requires = "nats")]
    nats_tls_ca: Option<PathBuf>,
    /// This replica's certificate (PEM) for TLS to the NATS server.
    #[arg(long, requires_all = ["nats", "nats_tls_key"])]
    nats_tls_cert: Option<PathBuf>,
    /// This replica's private key (PEM) for TLS to the NATS server.
    #[arg(long, requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
    /// The first token(s) of every NATS subject.
    #[arg(long, default_value = "attendance", requires = "nats")]
    nats_prefix: String,
    /// The cluster's name on the broker (one subject token).
    #[arg(long, default_value = "default", requires = "nats")]
    nats_cluster: String,
    /// Sends messages over NATS without the MAC over the cluster secret:
    /// the broker's permissions alone say who may speak as whom.
    #[arg(long, requires = "nats", conflicts_with_all = ["secret", "secret_env"])]
    nats_no_mac: bool,
    /// The cluster secret: at least 32 random bytes (a key, not a
    /// passphrase; e.g. `openssl rand -base64 32`). Prefer --secret-env: a
    /// command line is visible to other users of the machine.
    #[arg(long, conflicts_with = "secret_env")]
    secret: Option<String>,
    /// The environment variable holding the cluster secret.
    #[arg(long)]
    secret_env: Option<String>,
    /// The broadcast period in milliseconds; the other periods scale with it.
    #[arg(long, default_value_t = 1500)]
    broadcast_ms: u64,
    /// A topic to print the changes of; repeat for several.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// A presence to track at start, as `topic/key/meta` (the meta is a
    /// JSON string); repeat for several.
    #[arg(long = "track")]
    tracks: Vec<String>,
    /// Serves Phoenix Channels for phoenix.js at
    /// `ws://ADDR/socket/websocket`, and a demo page at
    /// `http://ADDR/doc/<id>?user=<name>` listing who views document `id`
    /// (topic `doc:<id>`) across the cluster.
    #[arg(long, value_name = "ADDR")]
    phoenix: Option<SocketAddr>,
    /// The certificate authority of the cluster (PEM), for TLS.
    #[arg(long, requires_all = ["tls_cert", "tls_key"], conflicts_with = "nats")]
    tls_ca: Option<PathBuf>,
    /// This replica's certificate chain (PEM), for TLS.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// This replica's private key (PEM), for TLS.
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Require every peer's certificate to name the replica it claims to
    /// be (a DNS name in its subjectAltName equal to its --name).
    #[arg(long, requires = "tls_ca")]
    tls_replica_names: bool,
    /// Serves the replica's metrics over HTTP on this address, in
    /// Prometheus' text format (any path; `docs/operations.md` lists them).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

fn secret(args: &Args) -> Result<String, String> {
    match (&args.secret, &args.secret_env) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(var)) => std::env::var(var).map_err(|_| format!("{var} is not set")),
        (None, None) => Err("give --secret or --secret-env (or --nats-no-mac with --nats)".into()),
    }
}

fn env(var: &str) -> Result<String, String> {
    std::env::var(var).map_err(|_| format!("{var} is not set"))
}

fn nats(args: &Args) -> Result<NatsConfig, String> {
    let mut config = NatsConfig::new(args.nats.iter().cloned());
    config.auth = match (
        &args.nats_user,
        &args.nats_password_env,
        &args.nats_token_env,
        &args.nats_nkey_env,
        &args.nats_creds,
    ) {
        (Some(user), Some(password), ..) => NatsAuth::UserPassword {
            user: user.clone(),
            password: env(password)?,
        },
        (_, _, Some(token), ..) => NatsAuth::Token(env(token)?),
        (_, _, _, Some(seed), _) => NatsAuth::NKey(env(seed)?),
        (.., Some(creds)) => NatsAuth::CredsFile(creds.clone()),
        _ => NatsAuth::None,
    };
    let mut tls = None;
    if let Some(ca) = &args.nats_tls_ca {
        tls = Some(NatsTls::new().with_root_certificates(ca));
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        tls = Some(tls.unwrap_or_default().with_client_certificate(cert, key));
    }
    config.tls = tls;
    config.prefix = args.nats_prefix.clone();
    config.cluster = args.nats_cluster.clone();
    Ok(if args.nats_no_mac {
        config.without_message_auth()
    } else {
        config
    })
}

fn tls(args: &Args) -> Result<Option<TlsConfig>, String> {
    let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |path: &PathBuf| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let tls =
        TlsConfig::from_pem(&read(ca)?, &read(cert)?, &read(key)?).map_err(|e| e.to_string())?;
    Ok(Some(if args.tls_replica_names {
        tls.with_replica_names()
    } else {
        tls
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attendance-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(addr) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
    }
    let config = Config::with_broadcast_period(Duration::from_millis(args.broadcast_ms.max(1)));
    let mut builder = Tracker::builder(&args.name).config(config);
    if !args.nats_no_mac {
        builder = builder.secret(secret(&args)?);
    }
    if args.nats.is_empty() {
        if let Some(listen) = args.listen {
            builder = builder.listen(listen);
        }
        builder = builder.peers(args.peers.iter().copied());
        if let Some(tls) = tls(&args)? {
            builder = builder.tls(tls);
        }
    } else {
        builder = builder.nats(nats(&args)?);
    }
    let tracker: Tracker<Value> = builder.start().await.map_err(|e| e.to_string())?;
    let addr = tracker
        .local_addr()
        .map_or_else(|| "nats".to_string(), |a| a.to_string());
    println!("ready {} {addr}", tracker.id());
    if let Some(addr) = args.phoenix {
        let http = serve_phoenix(&tracker, addr).await?;
        println!("phoenix http://{http}/doc/1?user=alice ws://{http}/socket/websocket");
    }

    for topic in &args.topics {
        let mut sub = tracker.subscribe(topic);
        let topic = topic.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.next().await {
                print_event(&topic, &event);
            }
        });
    }
    let mut guards: Guards = HashMap::new();
    for spec in &args.tracks {
        let mut parts = spec.splitn(3, '/');
        let (Some(t), Some(k), Some(m)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("--track {spec}: expected topic/key/meta"));
        };
        let guard = tracker
            .track(t, k, Value::from(m))
            .map_err(|e| e.to_string())?;
        guards.entry((t.into(), k.into())).or_default().push(guard);
    }

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                if !command(&tracker, &mut guards, &line) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(guards);
    tracker.shutdown().await;
    println!("bye");
    Ok(())
}

/// Serves [`attendance_node::demo_router`] on `addr`; the bound address.
async fn serve_phoenix(tracker: &Tracker<Value>, addr: SocketAddr) -> Result<SocketAddr, String> {
    let router = attendance_node::demo_router(tracker.clone()).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--phoenix {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            eprintln!("attendance-node: --phoenix {bound}: {e}");
        }
    });
    Ok(bound)
}

/// Runs one command line; false to stop.
fn command(tracker: &Tracker<Value>, guards: &mut Guards, line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["track", topic, key, meta] => match tracker.track(topic, key, Value::from(*meta)) {
            Ok(g) => guards
                .entry((topic.to_string(), key.to_string()))
                .or_default()
                .push(g),
            Err(e) => println!("error {e}"),
        },
        ["untrack", topic, key] => {
            guards.remove(&(topic.to_string(), key.to_string()));
        }
        ["update", topic, key, meta] => {
            for g in guards
                .get(&(topic.to_string(), key.to_string()))
                .into_iter()
                .flatten()
            {
                if let Err(e) = g.update(Value::from(*meta)) {
                    println!("error {e}");
                }
            }
        }
        ["list", topic] => {
            let mut rows = Vec::new();
            for group in tracker.list(topic) {
                for p in group.presences {
                    rows.push(format!("{}={}", group.key, show(p.meta())));
                }
            }
            println!("list {topic} {}", rows.join(","));
        }
        ["count", topic] => println!("count {topic} {}", tracker.count(topic)),
        ["bulk", topic, n, meta] => {
            let n: usize = n.parse().unwrap_or(0);
            for i in 0..n {
                match tracker.track(topic, &format!("user:{i}"), Value::from(*meta)) {
                    Ok(g) => guards
                        .entry((topic.to_string(), format!("user:{i}")))
                        .or_default()
                        .push(g),
                    Err(e) => {
                        println!("error {e}");
                        break;
                    }
                }
            }
            println!("bulk {topic} {n}");
        }
        ["metrics"] => {
            let m = tracker.metrics().protocol;
            let (mut messages, mut bytes) = (0, 0);
            for kind in MessageKind::ALL {
                messages += m.received(kind).messages;
                bytes += m.received(kind).bytes;
            }
            println!("metrics received_messages={messages} received_bytes={bytes}");
        }
        ["quit"] => return false,
        [] => {}
        _ => println!("error unknown command: {line}"),
    }
    true
}

/// A meta as printed: a JSON string as its text, anything else as JSON.
fn show(meta: &Value) -> std::borrow::Cow<'_, str> {
    match meta {
        Value::String(s) => s.as_str().into(),
        other => other.to_string().into(),
    }
}

fn print_event(topic: &str, event: &SubscriptionEvent<Value>) {
    match event {
        SubscriptionEvent::Diff(d) => {
            for p in d.joins() {
                println!("join {topic} {} {} {}", p.key(), show(p.meta()), p.id());
            }
            for p in d.leaves() {
                println!("leave {topic} {} {} {}", p.key(), show(p.meta()), p.id());
            }
            for u in d.updates() {
                println!("update {topic} {} {} {}", u.key(), show(u.meta()), u.id());
            }
        }
        SubscriptionEvent::Resync(list) => {
            let n: usize = list.iter().map(|g| g.presences.len()).sum();
            println!("resync {topic} {n}");
        }
        _ => {}
    }
}
