//! The public API fits the ecosystem: every public type is `Debug`, handles
//! are `Clone + Send + Sync`, errors can be matched on and keep their
//! sources, label types print their names, and a running tracker reports
//! its transport's counters.

use std::fmt::Debug;
use std::time::Duration;

use attendance::protocol::{Config, ConfigError, MessageKind, Node, ReplicaStatus};
use attendance::transport::{
    Bytes, MemoryNetwork, MemoryTransport, TransportError, TransportStats,
};
use attendance::{
    Change, Delta, Diff, KeyGroup, PresenceGuard, PurgeReason, State, StateBuilder, Subscription,
    SubscriptionEvent, Tracker, TrackerBuilder, TrackerMetrics,
};

fn debug<T: Debug>() {}
fn handle<T: Clone + Send + Sync + 'static>() {}

#[test]
fn every_public_type_is_debug_and_handles_are_shareable() {
    debug::<Tracker<String>>();
    debug::<TrackerBuilder<String>>();
    debug::<PresenceGuard<String>>();
    debug::<Subscription<String>>();
    debug::<SubscriptionEvent<String>>();
    debug::<TrackerMetrics>();
    debug::<MemoryNetwork>();
    debug::<MemoryTransport>();
    debug::<Node<String>>();
    debug::<State<String>>();
    debug::<StateBuilder<String>>();
    debug::<Change<String>>();
    debug::<Delta<String>>();
    debug::<Diff<String>>();
    debug::<KeyGroup<String>>();
    debug::<Bytes>();
    handle::<Tracker<String>>();
    handle::<MemoryNetwork>();

    // What an axum app's state looks like.
    #[derive(Clone, Debug)]
    #[allow(dead_code)]
    struct AppState {
        tracker: Tracker<String>,
    }
}

#[test]
fn debug_output_never_shows_the_secret() {
    let builder: TrackerBuilder<String> = Tracker::builder("a").secret("hunter2-hunter2");
    let text = format!("{builder:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[test]
fn config_errors_name_the_rule_broken() {
    let mut config = Config::default();
    config.down_period = config.broadcast_period;
    assert_eq!(config.validate(), Err(ConfigError::DownPeriodTooShort));
    let mut config = Config::default();
    config.max_message_bytes = 1;
    assert_eq!(config.validate(), Err(ConfigError::MaxMessageBytesTooSmall));
    let message = ConfigError::DownPeriodTooShort.to_string();
    assert!(message.contains("down_period"), "{message}");
}

#[test]
fn label_types_print_their_names() {
    let kinds: Vec<String> = MessageKind::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(
        kinds,
        ["heartbeat", "interval", "catchup_request", "catchup_reply"]
    );
    assert_eq!(ReplicaStatus::Up.to_string(), "up");
    assert_eq!(
        ReplicaStatus::Purged(PurgeReason::Left).to_string(),
        "purged (left)"
    );
    assert_eq!(PurgeReason::Permdown.to_string(), "permdown");
}

#[tokio::test]
async fn an_invalid_transport_setting_is_named() {
    let result: Result<Tracker<String>, _> = Tracker::builder("a")
        .listen("127.0.0.1:0".parse().expect("address"))
        .secret(Vec::new())
        .start()
        .await;
    match result {
        Err(attendance::StartError::Transport(TransportError::Config { setting, .. })) => {
            assert_eq!(setting, "secret");
        }
        other => panic!("expected the empty secret refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_running_tracker_reports_its_transport_counters() {
    let secret = "a cluster secret of some length, 32+";
    let a: Tracker<String> = Tracker::builder("a")
        .listen("127.0.0.1:0".parse().expect("address"))
        .secret(secret)
        .start()
        .await
        .expect("a starts");
    let b: Tracker<String> = Tracker::builder("b")
        .listen("127.0.0.1:0".parse().expect("address"))
        .peer(a.local_addr().expect("a listens"))
        .secret(secret)
        .start()
        .await
        .expect("b starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let Some(TransportStats::Tcp(stats)) = a.metrics().transport else {
            panic!("the TCP mesh keeps counters");
        };
        if stats.handshakes_ok >= 1 && stats.frames_received >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no handshake: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await;
    b.shutdown().await;

    let network = MemoryNetwork::new();
    let c: Tracker<String> = Tracker::builder("c")
        .start_with(|id| network.join(id))
        .expect("c starts");
    assert!(
        c.metrics().transport.is_none(),
        "the memory network keeps none"
    );
    c.shutdown().await;
}
