//! The protocol's periods and bounds.

use std::time::Duration;

/// How often a replica speaks and how long it waits before giving up on a
/// silent peer.
///
/// ```
/// use std::time::Duration;
/// use attendance::protocol::Config;
///
/// let mut config = Config::default();
/// config.broadcast_period = Duration::from_millis(200);
/// config.down_period = Duration::from_secs(4);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// How often changes are broadcast and heartbeats sent. Default 1.5 s.
    pub broadcast_period: Duration,
    /// A replica with no sign of life for this long is considered down: its
    /// presences are hidden. Default 30 s.
    pub down_period: Duration,
    /// A replica with no sign of life for this long is purged, leaving a
    /// purge record. Default 20 min.
    pub permdown_period: Duration,
    /// How long purge records are kept. Default 40 min (2 × `permdown_period`).
    pub tombstone_ttl: Duration,
    /// How long a catch-up request waits for its answer before it is sent
    /// to another holder. Default 3 s (2 × `broadcast_period`).
    pub catchup_timeout: Duration,
    /// The largest message sent or accepted. Default 1 MiB.
    pub max_message_bytes: usize,
    /// The largest catch-up answer (sent in pieces) accepted. Default 64 MiB.
    pub max_catchup_bytes: usize,
    /// Intervals of one replica held while an earlier one is missing.
    /// Default 64; beyond it they are dropped and caught up later.
    pub max_buffered_intervals: usize,
    /// Bytes of out-of-order intervals held across all replicas, a quarter
    /// of it at most for any one. Default 16 MiB; beyond it they are
    /// dropped and caught up later.
    pub max_buffered_bytes: usize,
    /// The most counters one interval may span (`to - from`). Default
    /// 65,536: a replica splits a busier period into several intervals,
    /// and refuses wider ones from peers. An interval is held out of order
    /// only when it starts at most `max_interval_span ×
    /// max_buffered_intervals` past what is held.
    pub max_interval_span: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self::with_broadcast_period(Duration::from_millis(1500))
    }
}

impl Config {
    /// The defaults, with every period scaled to `broadcast_period` as the
    /// defaults are to 1.5 s (down after 20 periods, permdown after 800).
    pub fn with_broadcast_period(broadcast_period: Duration) -> Self {
        let permdown_period = broadcast_period * 800;
        Self {
            broadcast_period,
            down_period: broadcast_period * 20,
            permdown_period,
            tombstone_ttl: permdown_period * 2,
            catchup_timeout: broadcast_period * 2,
            max_message_bytes: 1 << 20,
            max_catchup_bytes: 64 << 20,
            max_buffered_intervals: 64,
            max_buffered_bytes: 16 << 20,
            max_interval_span: 1 << 16,
        }
    }

    /// Checks that the settings make sense together.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first setting that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.broadcast_period < Duration::from_millis(1) {
            return Err(ConfigError::BroadcastPeriodTooShort);
        }
        if self.down_period < self.broadcast_period * 3 {
            return Err(ConfigError::DownPeriodTooShort);
        }
        if self.permdown_period < self.down_period {
            return Err(ConfigError::PermdownPeriodTooShort);
        }
        if self.tombstone_ttl < self.permdown_period {
            return Err(ConfigError::TombstoneTtlTooShort);
        }
        if self.catchup_timeout < self.broadcast_period {
            return Err(ConfigError::CatchupTimeoutTooShort);
        }
        if self.max_message_bytes < 64 << 10 {
            return Err(ConfigError::MaxMessageBytesTooSmall);
        }
        if self.max_catchup_bytes < self.max_message_bytes {
            return Err(ConfigError::MaxCatchupBytesTooSmall);
        }
        if self.max_interval_span == 0 || self.max_interval_span > crate::state::MAX_COUNTER {
            return Err(ConfigError::MaxIntervalSpanOutOfRange);
        }
        Ok(())
    }
}

/// A [`Config`] whose settings do not fit together: which rule the first
/// offending setting breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `broadcast_period` is under 1 ms.
    #[error("invalid protocol configuration: broadcast_period must be at least 1 ms")]
    BroadcastPeriodTooShort,
    /// `down_period` is under three broadcast periods.
    #[error("invalid protocol configuration: down_period must be at least 3 broadcast periods")]
    DownPeriodTooShort,
    /// `permdown_period` is under `down_period`.
    #[error("invalid protocol configuration: permdown_period must be at least down_period")]
    PermdownPeriodTooShort,
    /// `tombstone_ttl` is under `permdown_period`.
    #[error("invalid protocol configuration: tombstone_ttl must be at least permdown_period")]
    TombstoneTtlTooShort,
    /// `catchup_timeout` is under one broadcast period.
    #[error(
        "invalid protocol configuration: catchup_timeout must be at least one broadcast period"
    )]
    CatchupTimeoutTooShort,
    /// `max_message_bytes` is under 64 KiB.
    #[error("invalid protocol configuration: max_message_bytes must be at least 64 KiB")]
    MaxMessageBytesTooSmall,
    /// `max_catchup_bytes` is under `max_message_bytes`.
    #[error("invalid protocol configuration: max_catchup_bytes must be at least max_message_bytes")]
    MaxCatchupBytesTooSmall,
    /// `max_interval_span` is 0 or above 2^53.
    #[error("invalid protocol configuration: max_interval_span must be between 1 and 2^53")]
    MaxIntervalSpanOutOfRange,
}
