//! The settings of a [`NatsTransport`](super::NatsTransport), and why one
//! does not start.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::subject::valid_subject_part;
use crate::transport::TransportError;
use crate::transport::tcp::MIN_SECRET_LEN;

/// How this replica proves itself to the NATS server.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A token (`--auth` on the server).
    Token(String),
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// An NKey seed (`SU…`): the client signs the server's nonce with it.
    NKey(String),
    /// A `.creds` file holding a user JWT and its NKey seed (NATS
    /// accounts, decentralised auth).
    CredsFile(PathBuf),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            NatsAuth::NKey(_) => f.write_str("NKey(<redacted>)"),
            NatsAuth::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

/// TLS to the NATS server (rustls with the `ring` provider).
///
/// ```
/// use attendance::transport::nats::NatsTls;
///
/// let tls = NatsTls::new()
///     .with_root_certificates("/etc/nats/ca.pem")
///     .with_client_certificate("/etc/nats/replica.pem", "/etc/nats/replica-key.pem");
/// # let _ = tls;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsTls {
    /// A PEM file of certificate authorities to trust besides the system's
    /// roots.
    pub root_certificates: Option<PathBuf>,
    /// This replica's certificate chain and key (PEM), for servers that
    /// verify clients.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// TLS required, with the system's roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the authorities in this PEM file.
    #[must_use]
    pub fn with_root_certificates(mut self, pem: impl Into<PathBuf>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain and key (PEM files).
    #[must_use]
    pub fn with_client_certificate(
        mut self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_certificate = Some((certificate.into(), key.into()));
        self
    }
}

/// Why a [`NatsTransport`](super::NatsTransport) did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The server refused the credentials, or they could not be used.
    #[error("the NATS server refused this replica's credentials: {0}")]
    Auth(String),
    /// No server answered within `connect_timeout`.
    #[error("no NATS server of {servers} could be reached within {timeout:?}: {reason}")]
    Unreachable {
        /// The configured server URLs.
        servers: String,
        /// How long it was tried.
        timeout: Duration,
        /// The last failure.
        reason: String,
    },
    /// The TLS setup failed (a file that does not load, a server that does
    /// not speak TLS, a certificate not trusted).
    #[error("TLS to the NATS server failed: {0}")]
    Tls(String),
    /// The credentials file could not be read.
    #[error("cannot read the NATS credentials file {path}: {source}")]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// This replica's NATS user may not publish or subscribe on one of its
    /// subjects: a message sent to itself on it never came back.
    #[error(
        "the NATS user of this replica may not publish or subscribe on {subject} \
         (see the permissions in docs/operations.md){detail}"
    )]
    Permissions {
        /// The subject that failed.
        subject: String,
        /// What the server said, if it said anything.
        detail: String,
    },
}

/// Settings of a [`NatsTransport`](super::NatsTransport).
///
/// [`NatsConfig::new`] sets the defaults; change fields as needed before
/// [`NatsTransport::connect`](super::NatsTransport::connect), which checks
/// them. Messages carry a MAC over the cluster secret: set one with
/// [`NatsConfig::with_secret`] (a [`Tracker`](crate::Tracker) passes its
/// own), or turn the MAC off, trusting the broker alone, with
/// [`NatsConfig::without_message_auth`].
///
/// ```
/// use std::time::Duration;
/// use attendance::transport::nats::{NatsAuth, NatsConfig};
///
/// let mut config = NatsConfig::new(["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"])
///     .with_auth(NatsAuth::UserPassword { user: "node-1".into(), password: "…".into() })
///     .with_secret("a random cluster secret of 32+ bytes");
/// config.cluster = "prod".into();
/// config.reconnect_backoff_max = Duration::from_millis(500);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://…`); give several nodes of
    /// a cluster so the first connection does not depend on one. The client
    /// also learns the cluster's other nodes from the server.
    pub servers: Vec<String>,
    /// Credentials. Default none.
    pub auth: NatsAuth,
    /// TLS to the server. Default `None` (unless a URL says `tls://`).
    pub tls: Option<NatsTls>,
    /// The first subject token(s) of every subject: `<prefix>.<cluster>.…`.
    /// Default `attendance`.
    pub prefix: String,
    /// The cluster's name, one subject token: replicas with another name on
    /// the same broker do not see each other. Default `default`.
    pub cluster: String,
    /// The first pause before reconnecting; it doubles after each failed
    /// attempt up to `reconnect_backoff_max`, plus up to half of it at
    /// random. Default 50 ms.
    pub reconnect_backoff_min: Duration,
    /// Default 1 s.
    pub reconnect_backoff_max: Duration,
    /// How long the first connection (and the check that this replica may
    /// use its subjects) may take before start fails. Servers that refuse
    /// the connection are retried until then; refused credentials fail at
    /// once. Default 10 s.
    pub connect_timeout: Duration,
    /// Messages queued for the broker before more are dropped. Default 1024.
    pub queue_len: usize,
    /// Bytes queued for the broker beyond which messages are dropped.
    /// Default 64 MiB.
    pub queue_bytes: usize,
    /// Messages the client buffers per subscription before it drops more
    /// (a slow consumer). Default 65,536.
    pub subscription_capacity: usize,
    /// The largest protocol message: the protocol's `max_message_bytes` (a
    /// `Tracker` sets it so). Larger messages are not sent; pieces
    /// announcing more are dropped. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Bytes held at once for messages arriving in pieces, across all
    /// senders. Default 64 MiB.
    pub max_reassembly_bytes: usize,
    /// Replica names this transport keeps track of; past it the one heard
    /// from least recently is forgotten. Default 4,096 (the state's default
    /// `max_replicas`).
    pub max_peers: usize,
    /// How long [`Transport::close`](crate::transport::Transport::close)
    /// waits for queued messages to reach the server. Default 2 s.
    pub close_timeout: Duration,
    secret: Option<Vec<u8>>,
    message_auth: bool,
}

impl NatsConfig {
    /// The defaults, for the servers at `servers`.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            auth: NatsAuth::None,
            tls: None,
            prefix: "attendance".into(),
            cluster: "default".into(),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            queue_len: 1024,
            queue_bytes: 64 << 20,
            subscription_capacity: 65_536,
            max_message_bytes: 1 << 20,
            max_reassembly_bytes: 64 << 20,
            max_peers: 4096,
            close_timeout: Duration::from_secs(2),
            secret: None,
            message_auth: true,
        }
    }

    /// Credentials for the server.
    #[must_use]
    pub fn with_auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// TLS to the server.
    #[must_use]
    pub fn with_tls(mut self, tls: NatsTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The cluster secret every replica holds (at least
    /// [`MIN_SECRET_LEN`] random bytes): every message carries a MAC over
    /// it, checked end to end, so a client the broker admits but that
    /// lacks the secret can neither speak as a replica nor alter a
    /// message.
    #[must_use]
    pub fn with_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// Sends and accepts messages without a MAC: anyone the broker lets
    /// publish on the cluster's subjects is believed (see the trust section
    /// of the module docs). Every replica of the cluster must agree.
    #[must_use]
    pub fn without_message_auth(mut self) -> Self {
        self.message_auth = false;
        self.secret = None;
        self
    }

    /// Whether messages carry a MAC (a secret is set or required).
    pub fn message_auth(&self) -> bool {
        self.message_auth
    }

    /// Whether a secret was given.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    pub(crate) fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    pub(crate) fn validate(&self) -> Result<(), TransportError> {
        let missing_secret = self.message_auth && self.secret.is_none();
        let short_secret = self
            .secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET_LEN);
        let checks = [
            (
                self.servers.is_empty(),
                "servers",
                "must name at least one server",
            ),
            (
                missing_secret,
                "secret",
                "must be set for the message MAC (or the MAC turned off with without_message_auth)",
            ),
            (
                short_secret,
                "secret",
                "must be at least 32 bytes (a random key, not a passphrase)",
            ),
            (
                !valid_subject_part(&self.prefix),
                "prefix",
                "must be subject tokens without wildcards or spaces",
            ),
            (
                !valid_subject_part(&self.cluster) || self.cluster.contains('.'),
                "cluster",
                "must be one subject token without wildcards or spaces",
            ),
            (
                self.reconnect_backoff_min.is_zero(),
                "reconnect_backoff_min",
                "must be positive",
            ),
            (
                self.reconnect_backoff_max < self.reconnect_backoff_min,
                "reconnect_backoff_max",
                "must be at least reconnect_backoff_min",
            ),
            (
                self.connect_timeout.is_zero(),
                "connect_timeout",
                "must be positive",
            ),
            (self.queue_len == 0, "queue_len", "must be at least 1"),
            (self.queue_bytes == 0, "queue_bytes", "must be at least 1"),
            (
                self.subscription_capacity == 0,
                "subscription_capacity",
                "must be at least 1",
            ),
            (
                self.max_message_bytes == 0 || u32::try_from(self.max_message_bytes).is_err(),
                "max_message_bytes",
                "must be between 1 and 4 GiB",
            ),
            (
                self.max_reassembly_bytes < self.max_message_bytes,
                "max_reassembly_bytes",
                "must be at least max_message_bytes",
            ),
            (self.max_peers == 0, "max_peers", "must be at least 1"),
        ];
        match checks.into_iter().find(|(failed, ..)| *failed) {
            Some((_, setting, requirement)) => Err(TransportError::Config {
                setting,
                requirement,
            }),
            None => Ok(()),
        }
    }

    /// The pause before reconnect attempt `attempt` (1 for the first).
    pub(crate) fn backoff(&self, attempt: usize) -> Duration {
        let min = self.reconnect_backoff_min;
        let doublings = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(20);
        let base = min
            .saturating_mul(1u32 << doublings)
            .min(self.reconnect_backoff_max);
        let mut r = [0u8; 4];
        // Without randomness, no jitter: the backoff still bounds retries.
        let _ = getrandom::fill(&mut r);
        let jitter = base.mul_f64(f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX) / 2.0);
        base.saturating_add(jitter)
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("prefix", &self.prefix)
            .field("cluster", &self.cluster)
            .field("reconnect_backoff_min", &self.reconnect_backoff_min)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("queue_len", &self.queue_len)
            .field("queue_bytes", &self.queue_bytes)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_reassembly_bytes", &self.max_reassembly_bytes)
            .field("max_peers", &self.max_peers)
            .field("close_timeout", &self.close_timeout)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("message_auth", &self.message_auth)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NatsConfig {
        NatsConfig::new(["nats://127.0.0.1:4222"]).with_secret([7u8; 32])
    }

    #[test]
    fn the_defaults_with_a_secret_validate() {
        assert!(valid().validate().is_ok());
        assert!(
            NatsConfig::new(["nats://x"])
                .without_message_auth()
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn unusable_settings_name_the_setting() {
        let setting = |c: NatsConfig| match c.validate() {
            Err(TransportError::Config { setting, .. }) => setting,
            other => panic!("{other:?}"),
        };
        assert_eq!(setting(NatsConfig::new(["nats://x"])), "secret");
        assert_eq!(setting(valid().with_secret([1u8; 8])), "secret");
        assert_eq!(setting(NatsConfig::new(Vec::<String>::new())), "servers");
        let mut c = valid();
        c.prefix = "a.*".into();
        assert_eq!(setting(c), "prefix");
        let mut c = valid();
        c.cluster = "a.b".into();
        assert_eq!(setting(c), "cluster");
        let mut c = valid();
        c.reconnect_backoff_max = Duration::from_millis(1);
        assert_eq!(setting(c), "reconnect_backoff_max");
        let mut c = valid();
        c.max_reassembly_bytes = 1;
        assert_eq!(setting(c), "max_reassembly_bytes");
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_under_half() {
        let c = valid();
        for attempt in 1..40 {
            let d = c.backoff(attempt);
            let doublings = u32::try_from(attempt - 1).unwrap().min(20);
            let base = (c.reconnect_backoff_min * (1 << doublings)).min(c.reconnect_backoff_max);
            assert!(d >= base && d <= base + base / 2, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn secrets_and_passwords_are_not_printed() {
        let c = valid().with_auth(NatsAuth::UserPassword {
            user: "u".into(),
            password: "hunter2".into(),
        });
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("<redacted>"));
    }
}
