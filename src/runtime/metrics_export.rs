//! Publishes a tracker's counters through the `metrics` facade: once per
//! broadcast period, from the driver task, what [`Tracker::metrics`]
//! returns. Nothing is counted twice and nothing is added to the paths of
//! messages or calls; an application without a recorder pays one
//! [`Tracker::metrics`] a period. The names and labels are listed in
//! `docs/operations.md`.
//!
//! [`Tracker::metrics`]: super::Tracker::metrics

use std::time::Duration;

use metrics::{Label, counter, gauge};
use tokio::time::Instant;

use super::{Shared, TrackerMetrics};
use crate::Meta;
use crate::protocol::MessageKind;
use crate::transport::TransportStats;

/// When the driver task publishes next.
pub(super) struct Exporter {
    every: Duration,
    next: Instant,
}

impl Exporter {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            next: Instant::now(),
        }
    }

    /// Publishes the tracker's counters if a period has passed since the
    /// last time.
    pub(super) fn tick<M: Meta>(&mut self, shared: &Shared<M>) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + self.every;
        let replica = shared.lock().node.id().name().as_str().to_string();
        publish(&replica, &shared.metrics());
    }
}

/// Labels of one metric: the replica's name, then `extra`.
fn labels(replica: &str, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
    std::iter::once(Label::new("replica", replica.to_string()))
        .chain(extra.iter().map(|&(k, v)| Label::new(k, v)))
        .collect()
}

fn set_counter(name: &'static str, replica: &str, extra: &[(&'static str, &'static str)], v: u64) {
    counter!(name, labels(replica, extra)).absolute(v);
}

/// One counter a value of `label`: `(value of the label, count)` pairs.
fn set_counters(
    name: &'static str,
    replica: &str,
    label: &'static str,
    counts: &[(&'static str, u64)],
) {
    for &(value, n) in counts {
        set_counter(name, replica, &[(label, value)], n);
    }
}

fn set_gauge(name: &'static str, replica: &str, extra: &[(&'static str, &'static str)], v: f64) {
    gauge!(name, labels(replica, extra)).set(v);
}

/// Publishes one reading of a tracker's counters.
pub(super) fn publish(replica: &str, m: &TrackerMetrics) {
    let presences: usize = m.presences.values().sum();
    set_gauge("attendance_presences", replica, &[], presences as f64);
    set_gauge("attendance_topics", replica, &[], m.presences.len() as f64);
    for (&status, &n) in &m.replicas_by_status {
        set_gauge(
            "attendance_replicas",
            replica,
            &[("status", status)],
            n as f64,
        );
    }
    set_gauge(
        "attendance_peers_connected",
        replica,
        &[],
        m.peers_connected as f64,
    );

    let p = &m.protocol;
    for kind in MessageKind::ALL {
        for (direction, c) in [("sent", p.sent(kind)), ("received", p.received(kind))] {
            let extra = [("kind", kind.as_str()), ("direction", direction)];
            set_counter("attendance_messages_total", replica, &extra, c.messages);
            set_counter("attendance_message_bytes_total", replica, &extra, c.bytes);
        }
    }
    set_counters(
        "attendance_refused_messages_total",
        replica,
        "reason",
        &[
            ("rejected", p.rejected),
            ("wrong_sender", p.wrong_sender),
            ("implausible_beat", p.implausible_beats),
            ("interval_dropped", p.intervals_dropped),
            ("unrequested_piece", p.unrequested_pieces),
        ],
    );
    set_counters(
        "attendance_refused_entries_total",
        replica,
        "reason",
        &[
            ("over_limits", p.refused_entries),
            ("undecodable_meta", p.undecodable_metas),
        ],
    );
    set_counters(
        "attendance_catchups_total",
        replica,
        "outcome",
        &[
            ("requested", p.catchups_requested),
            ("served", p.catchups_served),
            ("served_whole", p.full_transfers_served),
            ("declined", p.catchups_declined),
            ("too_large", p.catchups_too_large),
            ("refused", p.catchups_refused),
        ],
    );
    set_counter(
        "attendance_subscriber_resyncs_total",
        replica,
        &[],
        m.subscriber_resyncs,
    );
    set_gauge(
        "attendance_lock_longest_hold_seconds",
        replica,
        &[],
        m.longest_lock_hold.as_secs_f64(),
    );
    set_counter(
        "attendance_lock_holds_over_1ms_total",
        replica,
        &[],
        m.lock_holds_over_1ms,
    );
    if let Some(transport) = &m.transport {
        publish_transport(replica, transport);
    }
}

fn publish_transport(replica: &str, stats: &TransportStats) {
    let (transport, traffic, refused, dropped): (_, [u64; 4], Vec<_>, Vec<_>) = match stats {
        TransportStats::Tcp(s) => {
            set_counters(
                "attendance_transport_handshakes_total",
                replica,
                "outcome",
                &[("ok", s.handshakes_ok), ("refused", s.handshakes_refused)],
            );
            set_counter(
                "attendance_transport_connect_failures_total",
                replica,
                &[],
                s.connect_failures,
            );
            (
                "tcp",
                [
                    s.frames_sent,
                    s.bytes_sent,
                    s.frames_received,
                    s.bytes_received,
                ],
                vec![
                    ("auth_failure", s.auth_failures),
                    ("version_mismatch", s.version_mismatches),
                    ("tls_failure", s.tls_failures),
                    ("unknown_key", s.unknown_keys),
                    ("name_not_certified", s.names_not_certified),
                    ("busy", s.handshakes_busy),
                    ("frame_refused", s.frames_refused),
                    ("frame_oversized", s.frames_oversized),
                    ("link_refused", s.links_refused),
                ],
                vec![
                    ("queue_full", s.dropped_full),
                    ("unreachable", s.dropped_unreachable),
                    ("invalid", s.dropped_invalid),
                ],
            )
        }
        #[cfg(feature = "nats")]
        TransportStats::Nats(s) => {
            set_gauge(
                "attendance_transport_connected",
                replica,
                &[],
                f64::from(u8::from(s.connected)),
            );
            set_counters(
                "attendance_transport_connection_events_total",
                replica,
                "event",
                &[("connect", s.connects), ("disconnect", s.disconnects)],
            );
            (
                "nats",
                [
                    s.messages_sent,
                    s.bytes_sent,
                    s.messages_received,
                    s.bytes_received,
                ],
                vec![
                    ("frame_malformed", s.frames_malformed),
                    ("frame_unauthenticated", s.frames_unauthenticated),
                ],
                vec![
                    ("queue_full", s.dropped_full),
                    ("piece_lost", s.pieces_dropped),
                    ("publish_failed", s.publish_failures),
                ],
            )
        }
    };
    let [frames_sent, bytes_sent, frames_received, bytes_received] = traffic;
    for (direction, frames, bytes) in [
        ("sent", frames_sent, bytes_sent),
        ("received", frames_received, bytes_received),
    ] {
        let extra = [("transport", transport), ("direction", direction)];
        set_counter("attendance_transport_frames_total", replica, &extra, frames);
        set_counter("attendance_transport_bytes_total", replica, &extra, bytes);
    }
    for (reason, n) in refused {
        let extra = [("transport", transport), ("reason", reason)];
        set_counter("attendance_transport_refusals_total", replica, &extra, n);
    }
    for (reason, n) in dropped {
        let extra = [("transport", transport), ("reason", reason)];
        set_counter("attendance_transport_dropped_total", replica, &extra, n);
    }
}
