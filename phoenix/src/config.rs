//! The bounds one websocket lives within.

use std::time::Duration;

/// Bounds on what one websocket may cost the server. Every bound has a
/// default that suits a browser running phoenix.js; change them with the
/// chained setters:
///
/// ```
/// use std::time::Duration;
/// use attendance_phoenix::Limits;
///
/// let limits = Limits::default()
///     .idle_timeout(Duration::from_secs(90))
///     .max_topics(10);
/// assert_eq!(limits.max_topics, 10);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// A socket that sends nothing for this long is closed and untracked.
    /// phoenix.js sends a heartbeat every 30 s, so the default, 60 s, is
    /// Phoenix's own and leaves one heartbeat of slack.
    pub idle_timeout: Duration,
    /// The largest inbound frame, in bytes; a larger one closes the socket
    /// (code 1009). Default 64 KiB: a join or an update carries one meta.
    pub max_frame_bytes: usize,
    /// How many topics one socket may be joined to at once; a join past
    /// it is refused with reason `"too many topics"`. Default 100.
    pub max_topics: usize,
    /// How many frames (heartbeats included) one socket may send per
    /// [`Limits::push_window`]; past it each frame gets the error reply
    /// `"rate limited"` and is not acted on. Default 100 per 10 s.
    pub max_pushes: u32,
    /// The window [`Limits::max_pushes`] counts over. Default 10 s.
    pub push_window: Duration,
    /// How many broadcast diffs may wait for one socket. A socket that
    /// falls further behind skips them and gets a fresh `presence_state`
    /// instead, so a slow client costs bounded memory. Default 256.
    pub outbound_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
            max_topics: 100,
            max_pushes: 100,
            push_window: Duration::from_secs(10),
            outbound_queue: 256,
        }
    }
}

impl Limits {
    /// Sets [`Limits::idle_timeout`].
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`Limits::max_frame_bytes`].
    #[must_use]
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Sets [`Limits::max_topics`].
    #[must_use]
    pub fn max_topics(mut self, topics: usize) -> Self {
        self.max_topics = topics;
        self
    }

    /// Sets [`Limits::max_pushes`] per `window`.
    #[must_use]
    pub fn max_pushes(mut self, pushes: u32, window: Duration) -> Self {
        self.max_pushes = pushes;
        self.push_window = window;
        self
    }

    /// Sets [`Limits::outbound_queue`] (at least 1).
    #[must_use]
    pub fn outbound_queue(mut self, diffs: usize) -> Self {
        self.outbound_queue = diffs.max(1);
        self
    }
}
