//! The tasks between the transport and the NATS client: connecting, the
//! writer that frames and publishes what the transport queued, and the
//! reader that checks what arrives and reports it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::{ConnectErrorKind, ConnectOptions, Event, StatusCode, Subscriber};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{NatsAuth, NatsConfig, NatsError};
use super::frame::{self, Assembled, Assembly, FrameError, Framer};
use super::stats::{Counters, add, bump};
use super::subject::{Stream, Subjects, name_of_token, subject_token};
use crate::log_budget::LogBudget;
use crate::transport::{TransportError, TransportEvent};
use crate::{ReplicaId, ReplicaName};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How often a replica that knows no peer says hello, in case its first
/// hello went out before anyone listened.
const HELLO_INTERVAL: Duration = Duration::from_secs(1);

/// What the transport and its tasks share.
pub(crate) struct Shared {
    pub(crate) me: ReplicaId,
    pub(crate) subjects: Subjects,
    pub(crate) config: NatsConfig,
    pub(crate) key: Option<HmacSha256>,
    pub(crate) counters: Counters,
    /// The peers reported connected and not lost since: by name, the id
    /// reported.
    connected: Mutex<BTreeMap<ReplicaName, ReplicaId>>,
    /// Bytes waiting in the writer's queue.
    pub(crate) queued: AtomicUsize,
    /// The last error the server sent, for the start-up diagnosis.
    pub(crate) server_error: watch::Sender<Option<String>>,
    log: Mutex<LogBudget>,
}

impl Shared {
    pub(crate) fn new(me: ReplicaId, config: NatsConfig, key: Option<HmacSha256>) -> Self {
        Self {
            subjects: Subjects::new(&config.prefix, &config.cluster, me.name()),
            me,
            config,
            key,
            counters: Counters::default(),
            connected: Mutex::new(BTreeMap::new()),
            queued: AtomicUsize::new(0),
            server_error: watch::Sender::new(None),
            log: Mutex::new(LogBudget::default()),
        }
    }

    pub(crate) fn connected(&self) -> MutexGuard<'_, BTreeMap<ReplicaName, ReplicaId>> {
        // Nothing panics under the lock; the map is consistent anyway.
        self.connected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a line a peer or the broker caused may be logged now.
    fn may_log(&self) -> bool {
        let (log, unlogged) = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if unlogged > 0 {
            tracing::warn!(
                unlogged,
                "NATS transport lines not logged in the last second"
            );
        }
        log
    }

    fn on_event(&self, event: Event) {
        let c = &self.counters;
        match event {
            Event::Connected => {
                c.connected.store(true, Ordering::Relaxed);
                bump(&c.connects);
                tracing::info!("broker link up");
            }
            Event::Disconnected => {
                c.connected.store(false, Ordering::Relaxed);
                bump(&c.disconnects);
                tracing::warn!(
                    "broker link down: reconnecting; peers keep their status until down_period"
                );
            }
            Event::SlowConsumer(_) => {
                bump(&c.slow_consumer_events);
                if self.may_log() {
                    tracing::warn!("NATS subscription buffer full: messages dropped, catching up");
                }
            }
            Event::ServerError(error) => {
                bump(&c.server_errors);
                if self.may_log() {
                    tracing::warn!(%error, "NATS server error");
                }
                self.server_error.send_replace(Some(error.to_string()));
            }
            Event::LameDuckMode => tracing::info!("NATS server entering lame duck mode"),
            other => tracing::debug!(event = %other, "NATS client event"),
        }
    }
}

/// One message for the writer.
pub(crate) enum Outgoing {
    /// On this replica's broadcast subject, for everyone.
    Broadcast(Bytes),
    /// A catch-up request to the replica with this subject token.
    Request { holder: String, bytes: Bytes },
    /// To the inbox of the replica with this subject token: a catch-up
    /// answer, or a heartbeat for it alone.
    Direct { to: String, bytes: Bytes },
    /// The start-up check: one frame to itself on each subject.
    Probe(Bytes),
}

impl Outgoing {
    pub(crate) fn len(&self) -> usize {
        match self {
            Outgoing::Broadcast(bytes)
            | Outgoing::Request { bytes, .. }
            | Outgoing::Direct { bytes, .. }
            | Outgoing::Probe(bytes) => bytes.len(),
        }
    }
}

/// Connects to the first server that takes this replica, retrying
/// servers that refuse the connection until `connect_timeout`.
pub(crate) async fn connect(shared: &Arc<Shared>) -> Result<async_nats::Client, TransportError> {
    connect_with(shared, options(shared).await?).await
}

pub(crate) async fn connect_with(
    shared: &Shared,
    options: ConnectOptions,
) -> Result<async_nats::Client, TransportError> {
    let config = &shared.config;
    let servers = config.servers.join(", ");
    let deadline = Instant::now() + config.connect_timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tried =
            tokio::time::timeout_at(deadline, options.clone().connect(config.servers.as_slice()))
                .await;
        let reason = match tried {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(error)) => match error.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    return Err(NatsError::Auth(error.to_string()).into());
                }
                ConnectErrorKind::Tls => return Err(NatsError::Tls(error.to_string()).into()),
                ConnectErrorKind::ServerParse => {
                    return Err(TransportError::Config {
                        setting: "servers",
                        requirement: "must be NATS URLs (nats://host:port)",
                    });
                }
                _ => error.to_string(),
            },
            Err(_) => "timed out".to_string(),
        };
        let pause = config.backoff(attempt);
        if Instant::now() + pause >= deadline {
            return Err(NatsError::Unreachable {
                servers,
                timeout: config.connect_timeout,
                reason,
            }
            .into());
        }
        tracing::debug!(%reason, ?pause, "NATS server not reachable yet");
        tokio::time::sleep(pause).await;
    }
}

/// The credentials and TLS settings of every connection.
pub(crate) async fn base_options(shared: &Shared) -> Result<ConnectOptions, NatsError> {
    let config = &shared.config;
    let mut options =
        match &config.auth {
            NatsAuth::None => ConnectOptions::new(),
            NatsAuth::Token(token) => ConnectOptions::with_token(token.clone()),
            NatsAuth::UserPassword { user, password } => {
                ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            NatsAuth::NKey(seed) => ConnectOptions::with_nkey(seed.clone()),
            NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| NatsError::CredsFile {
                    path: path.clone(),
                    source,
                })?,
        };
    if let Some(tls) = &config.tls {
        options = options.require_tls(true);
        if let Some(roots) = &tls.root_certificates {
            options = options.add_root_certificates(roots.clone());
        }
        if let Some((cert, key)) = &tls.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    Ok(options)
}

async fn options(shared: &Arc<Shared>) -> Result<ConnectOptions, NatsError> {
    let config = &shared.config;
    let backoff = config.clone();
    let events = Arc::clone(shared);
    Ok(base_options(shared)
        .await?
        .name(format!("attendance {}", shared.me))
        // A replica's own messages do not come back to it.
        .no_echo()
        // Requests made by the client itself (none today) get replies under
        // this replica's inbox, which its permissions cover.
        .custom_inbox_prefix(format!(
            "{}.{}.inbox.{}",
            config.prefix,
            config.cluster,
            shared.subjects.my_token()
        ))
        .subscription_capacity(config.subscription_capacity)
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempt| backoff.backoff(attempt))
        .event_callback(move |event| {
            let shared = Arc::clone(&events);
            async move { shared.on_event(event) }
        }))
}

/// Subscribes to this replica's three subjects: broadcasts, requests,
/// inbox.
pub(crate) async fn subscribe(
    shared: &Shared,
    client: &async_nats::Client,
) -> Result<[Subscriber; 3], TransportError> {
    let [bcast, rpc, inbox] = shared.subjects.subscriptions();
    let subscribe = |subject: String| async move {
        client
            .subscribe(subject.clone())
            .await
            .map_err(|e| NatsError::Permissions {
                subject,
                detail: format!(": {e}"),
            })
    };
    Ok([
        subscribe(bcast).await?,
        subscribe(rpc).await?,
        subscribe(inbox).await?,
    ])
}

/// Frames and publishes what the transport queued, in order; says hello
/// while no peer is known.
pub(crate) async fn write_loop(
    shared: Arc<Shared>,
    client: async_nats::Client,
    mut queue: mpsc::Receiver<Outgoing>,
) {
    let mut framer = Framer::new(&shared.me, shared.key.clone());
    let writer = Writer {
        shared: &shared,
        client: &client,
    };
    let mut hello = tokio::time::interval(HELLO_INTERVAL);
    loop {
        tokio::select! {
            item = queue.recv() => {
                let Some(item) = item else { return };
                shared.queued.fetch_sub(item.len(), Ordering::Relaxed);
                writer.write(&mut framer, item).await;
            }
            _ = hello.tick() => {
                if shared.connected().is_empty() {
                    writer.write(&mut framer, Outgoing::Broadcast(Bytes::new())).await;
                }
            }
        }
    }
}

struct Writer<'a> {
    shared: &'a Shared,
    client: &'a async_nats::Client,
}

impl Writer<'_> {
    async fn write(&self, framer: &mut Framer, item: Outgoing) {
        let subjects = &self.shared.subjects;
        match item {
            Outgoing::Broadcast(bytes) => {
                let subject = subjects.broadcast();
                self.send(framer, Stream::Broadcast, &subject, None, &bytes)
                    .await;
            }
            Outgoing::Request { holder, bytes } => {
                let subject = subjects.request(&holder);
                let reply = subjects.reply_from(&holder);
                self.send(framer, Stream::Request, &subject, Some(reply), &bytes)
                    .await;
            }
            Outgoing::Direct { to, bytes } => {
                let subject = subjects.inbox(&to);
                self.send(framer, Stream::Inbox, &subject, None, &bytes)
                    .await;
            }
            Outgoing::Probe(nonce) => {
                for (stream, subject, reply) in subjects.own() {
                    let frames = framer.frames(stream, &subject, true, &nonce, 1 << 16);
                    for f in frames.into_iter().flatten() {
                        self.publish(&subject, reply.clone(), f).await;
                    }
                }
            }
        }
    }

    async fn send(
        &self,
        framer: &mut Framer,
        stream: Stream,
        subject: &str,
        reply: Option<String>,
        bytes: &[u8],
    ) {
        let c = &self.shared.counters;
        // Read before every message: it changes with the server, after a
        // reconnect.
        let max = self.client.server_info().max_payload;
        c.max_payload
            .store(u64::try_from(max).unwrap_or(u64::MAX), Ordering::Relaxed);
        let Some(frames) = framer.frames(stream, subject, false, bytes, max) else {
            bump(&c.publish_failures);
            if self.shared.may_log() {
                tracing::warn!(
                    len = bytes.len(),
                    max,
                    "message too large even in pieces, dropped"
                );
            }
            return;
        };
        if frames.len() > 1 {
            bump(&c.messages_split);
        }
        for f in frames {
            self.publish(subject, reply.clone(), f).await;
        }
    }

    /// Publishes one frame. It may wait while the client's own queue is
    /// full (the broker link down); the transport's queue in front of this
    /// task drops what does not fit meanwhile, so the tracker never waits.
    async fn publish(&self, subject: &str, reply: Option<String>, frame: Bytes) {
        let c = &self.shared.counters;
        let len = frame.len();
        let subject = subject.to_string();
        let sent = match reply {
            Some(reply) => self.client.publish_with_reply(subject, reply, frame).await,
            None => self.client.publish(subject, frame).await,
        };
        match sent {
            Ok(()) => {
                bump(&c.messages_sent);
                add(&c.bytes_sent, len);
            }
            Err(error) => {
                bump(&c.publish_failures);
                if self.shared.may_log() {
                    tracing::warn!(%error, len, "NATS publish failed, message dropped");
                }
            }
        }
    }
}

/// What the reader keeps per sender name.
struct Peer {
    id: ReplicaId,
    /// The greatest sequence number seen per stream.
    seqs: [u64; 3],
    pieces: [Option<Assembly>; 3],
    heard: Instant,
}

impl Peer {
    fn new(id: ReplicaId) -> Self {
        Self {
            id,
            seqs: [0; 3],
            pieces: [None, None, None],
            heard: Instant::now(),
        }
    }

    fn held(&self) -> usize {
        self.pieces.iter().flatten().map(Assembly::held).sum()
    }
}

/// Reads this replica's subscriptions and reports what passes the checks.
pub(crate) struct Reader {
    shared: Arc<Shared>,
    events: mpsc::Sender<TransportEvent>,
    probe: watch::Sender<[bool; 3]>,
    nonce: Bytes,
    peers: HashMap<ReplicaName, Peer>,
    /// Bytes held by all assemblies.
    held: usize,
}

impl Reader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        events: mpsc::Sender<TransportEvent>,
        probe: watch::Sender<[bool; 3]>,
        nonce: Bytes,
    ) -> Self {
        Self {
            shared,
            events,
            probe,
            nonce,
            peers: HashMap::new(),
            held: 0,
        }
    }

    /// Runs until the client ends its subscriptions or the transport stops
    /// listening.
    ///
    /// Broadcasts are read first, and again before each request or inbox
    /// message: the client hands messages to the subscriptions in the order
    /// they arrived, so an interval a peer broadcast before a heartbeat it
    /// sent to this replica alone is in the broadcast subscription by the
    /// time the heartbeat is seen, and is read before it.
    pub(crate) async fn run(mut self, subs: [Subscriber; 3]) {
        let [mut bcast, mut rpc, mut inbox] = subs;
        loop {
            let (stream, message) = tokio::select! {
                biased;
                m = bcast.next() => (Stream::Broadcast, m),
                m = rpc.next() => (Stream::Request, m),
                m = inbox.next() => (Stream::Inbox, m),
            };
            let Some(message) = message else { return };
            if stream != Stream::Broadcast {
                while let Some(Some(earlier)) = bcast.next().now_or_never() {
                    if !self.handle(Stream::Broadcast, &earlier).await {
                        return;
                    }
                }
            }
            if !self.handle(stream, &message).await {
                return;
            }
        }
    }

    /// Reports what one message gives; false once no one listens.
    async fn handle(&mut self, stream: Stream, message: &async_nats::Message) -> bool {
        for event in self.on_message(stream, message) {
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        true
    }

    fn on_message(&mut self, stream: Stream, m: &async_nats::Message) -> Vec<TransportEvent> {
        let shared = Arc::clone(&self.shared);
        let c = &shared.counters;
        bump(&c.messages_received);
        add(&c.bytes_received, m.payload.len());
        let subject = m.subject.as_str();
        let Some(token) = shared.subjects.sender_token(stream, subject) else {
            bump(&c.frames_malformed);
            return Vec::new();
        };
        if m.status == Some(StatusCode::NO_RESPONDERS) {
            return self.no_responders(stream, token);
        }
        let frame = match frame::open(shared.key.as_ref(), subject, &m.payload) {
            Ok(f) => f,
            Err(error) => {
                let counter = match error {
                    FrameError::Malformed => &c.frames_malformed,
                    FrameError::TagMismatch | FrameError::BadTag => &c.frames_unauthenticated,
                };
                bump(counter);
                if shared.may_log() {
                    tracing::warn!(?error, %subject, "NATS frame refused");
                }
                return Vec::new();
            }
        };
        if subject_token(frame.sender.name()) != token {
            bump(&c.frames_wrong_subject);
            if shared.may_log() {
                tracing::warn!(sender = %frame.sender, %subject, "frame names another sender than its subject");
            }
            return Vec::new();
        }
        if frame.sender == shared.me {
            // The start-up check's second connection speaks as this replica.
            if frame.probe && frame.payload == self.nonce.as_ref() {
                self.probe.send_modify(|p| p[stream.index()] = true);
            }
            return Vec::new();
        }
        // Until this replica's own probes came back, nothing is reported:
        // no one reads the events before the start-up check is over, and
        // they must not hold the probes up. The peers speak again.
        if frame.probe || !self.probe.borrow().iter().all(|b| *b) {
            return Vec::new();
        }
        let mut events = Vec::new();
        let name = frame.sender.name().clone();
        self.make_room(&name, &mut events);
        let peer = self
            .peers
            .entry(name.clone())
            .or_insert_with(|| Peer::new(frame.sender.clone()));
        if frame.sender.incarnation() < peer.id.incarnation() {
            bump(&c.frames_stale);
            return events;
        }
        if frame.sender.incarnation() > peer.id.incarnation() {
            // A restarted replica: the old one is gone for good.
            self.held -= peer.held();
            let old = std::mem::replace(peer, Peer::new(frame.sender.clone()));
            if shared.connected().remove(&name).is_some() {
                events.push(TransportEvent::LinkLost(old.id));
            }
        }
        let i = stream.index();
        if frame.seq <= peer.seqs[i] {
            bump(&c.frames_stale);
            return events;
        }
        peer.seqs[i] = frame.seq;
        peer.heard = Instant::now();
        let limits = (
            shared.config.max_message_bytes,
            shared.config.max_reassembly_bytes,
        );
        let payload = match frame.piece {
            None => frame.payload.to_vec(),
            Some(piece) => {
                match Assembly::add(
                    &mut peer.pieces[i],
                    frame.seq,
                    piece,
                    frame.payload,
                    limits,
                    &mut self.held,
                ) {
                    Assembled::Done(whole) => {
                        bump(&c.messages_joined);
                        whole
                    }
                    Assembled::Pending => return events,
                    Assembled::Dropped => {
                        bump(&c.pieces_dropped);
                        return events;
                    }
                }
            }
        };
        if payload.len() > shared.config.max_message_bytes {
            bump(&c.frames_malformed);
            return events;
        }
        let id = peer.id.clone();
        if let Entry::Vacant(entry) = shared.connected().entry(name) {
            entry.insert(id.clone());
            events.push(TransportEvent::Connected(id.clone()));
        }
        // An empty payload is a hello: the peer is there, nothing to read.
        if !payload.is_empty() {
            events.push(TransportEvent::Message {
                from: id,
                bytes: Bytes::from(payload),
            });
        }
        events
    }

    /// The server found no one subscribed to a request's subject: the
    /// holder it went to is gone. Reported as a lost link, so the protocol
    /// asks another holder now rather than after `catchup_timeout`.
    fn no_responders(&mut self, stream: Stream, holder: &str) -> Vec<TransportEvent> {
        let shared = &self.shared;
        bump(&shared.counters.no_responders);
        if stream != Stream::Inbox {
            return Vec::new();
        }
        let Some(name) = name_of_token(holder) else {
            return Vec::new();
        };
        match shared.connected().remove(&name) {
            Some(id) => {
                tracing::debug!(peer = %id, "no responders: the holder is gone");
                vec![TransportEvent::LinkLost(id)]
            }
            None => Vec::new(),
        }
    }

    /// Forgets the peer heard from least recently when `max_peers` are
    /// known and `name` is not one of them.
    fn make_room(&mut self, name: &ReplicaName, events: &mut Vec<TransportEvent>) {
        if self.peers.len() < self.shared.config.max_peers || self.peers.contains_key(name) {
            return;
        }
        let Some(oldest) = self
            .peers
            .iter()
            .min_by_key(|(_, p)| p.heard)
            .map(|(n, _)| n.clone())
        else {
            return;
        };
        if let Some(peer) = self.peers.remove(&oldest) {
            self.held -= peer.held();
            bump(&self.shared.counters.peers_evicted);
            if self.shared.connected().remove(&oldest).is_some() {
                events.push(TransportEvent::LinkLost(peer.id));
            }
        }
    }
}
