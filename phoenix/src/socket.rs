//! One websocket: its frames in, its replies, states and diffs out.
//!
//! One task writes everything and handles what comes in, so a join's
//! reply, its `presence_state` and the diffs after it leave in that order;
//! broadcast diffs wait in a bounded queue the hub fills, and a socket that
//! lets it overflow gets a fresh `presence_state` instead of the diffs it
//! missed. A second task only reads frames and hands them over: the writer,
//! woken once per diff, then does not try a read each time.

use std::collections::HashMap;
use std::sync::Arc;

use attendance::{Meta, PresenceGuard};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Duration, Instant, timeout};

use crate::endpoint::Shared;
use crate::frame::{self, Inbound};
use crate::hub::{Membership, Out};
use crate::policy::{Connection, Join, Object};
use crate::render;

/// The presence a joined topic tracks.
struct Tracked<M: Meta> {
    key: String,
    meta: M,
    guard: PresenceGuard<M>,
}

/// A joined topic.
struct Channel<M: Meta> {
    join_ref: String,
    /// `None` for a watch-only join. Dropped before the membership: the
    /// leave is still broadcast to the other sockets.
    tracked: Option<Tracked<M>>,
    membership: Membership<M>,
    /// Diffs up to this number are in the list the socket was sent.
    sent_through: u64,
}

/// How long a join's state waits for the endpoint to see the joiner's
/// own presence (a moment, unless the tracker has stopped).
const OWN_JOIN_PATIENCE: Duration = Duration::from_secs(1);

/// Why the loop stops.
enum Stop {
    /// The client went away or a write failed: nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

struct Socket<M: Meta> {
    ws: SplitSink<WebSocket, Message>,
    shared: Arc<Shared<M>>,
    connection: Connection,
    channels: HashMap<String, Channel<M>>,
    queue: mpsc::Sender<Out>,
    wake: Arc<Notify>,
    window_start: Instant,
    pushes: u32,
}

/// Serves one upgraded websocket until it closes; everything it tracked
/// is untracked when this returns.
pub(crate) async fn serve<M>(ws: WebSocket, shared: Arc<Shared<M>>, connection: Connection)
where
    M: Meta + Send + Sync + 'static,
{
    let (queue, mut outbound) = mpsc::channel(shared.limits.outbound_queue);
    let (sink, mut stream) = ws.split();
    // One frame at a time: the reader waits while one is being handled.
    let (frames, mut inbound) = mpsc::channel(1);
    let reader = tokio::spawn(async move {
        loop {
            let next = stream.next().await;
            let last = !matches!(next, Some(Ok(_)));
            if frames.send(next).await.is_err() || last {
                break;
            }
        }
    });
    let _reader = AbortOnDrop(reader.abort_handle());
    let mut socket = Socket {
        ws: sink,
        shared,
        connection,
        channels: HashMap::new(),
        queue,
        wake: Arc::new(Notify::new()),
        window_start: Instant::now(),
        pushes: 0,
    };
    let idle_timeout = socket.shared.limits.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let wake = socket.wake.clone();
    // Kept across turns of the loop: registering a waiter anew on every
    // diff sent costs a lock.
    let mut lagged = std::pin::pin!(wake.notified());
    let stop = loop {
        let step = tokio::select! {
            frame = inbound.recv() => {
                idle.as_mut().reset(Instant::now() + idle_timeout);
                // `None`: the reader ended, after handing over the end.
                socket.inbound(frame.flatten()).await
            }
            Some(out) = outbound.recv() => socket.outbound(out).await,
            () = &mut lagged => {
                lagged.set(wake.notified());
                socket.resync().await
            }
            () = &mut idle => Err(Stop::Close(close_code::NORMAL, "idle timeout")),
        };
        if let Err(stop) = step {
            break stop;
        }
    };
    if let Stop::Close(code, reason) = stop {
        let close = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(close))).await;
    }
    // Dropping the channels untracks their presences.
}

/// Stops the reader when the socket's task ends, however it ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<M> Socket<M>
where
    M: Meta + Send + Sync + 'static,
{
    async fn send(&mut self, message: Message) -> Result<(), Stop> {
        // A client that stops reading must not hold the task forever.
        match timeout(self.shared.limits.idle_timeout, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Stop::Gone),
        }
    }

    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), Stop> {
        self.send(Message::Text(text)).await
    }

    async fn inbound(&mut self, inbound: Option<Result<Message, axum::Error>>) -> Result<(), Stop> {
        match inbound {
            Some(Ok(Message::Text(text))) => self.frame(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => Err(Stop::Close(
                close_code::UNSUPPORTED,
                "binary frames are not served",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Close(_))) | None => Err(Stop::Gone),
            // Mostly a frame over the size limit, which the websocket layer
            // refuses before it is read whole.
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                Err(Stop::Close(
                    close_code::SIZE,
                    "frame too large or malformed",
                ))
            }
        }
    }

    async fn frame(&mut self, text: &str) -> Result<(), Stop> {
        if text.len() > self.shared.limits.max_frame_bytes {
            return Err(Stop::Close(close_code::SIZE, "frame too large"));
        }
        let Some(f) = frame::parse(text) else {
            return Err(Stop::Close(close_code::INVALID, "not a phoenix v2 frame"));
        };
        if !self.within_rate() {
            return self.reply_error(&f, "rate limited").await;
        }
        match (f.topic.as_str(), f.event.as_str()) {
            ("phoenix", "heartbeat") => {
                let reply =
                    frame::reply_ok(f.join_ref.as_deref(), f.reference.as_deref(), "phoenix");
                self.send_text(reply).await
            }
            (_, "phx_join") => self.join(f).await,
            (_, "phx_leave") => self.leave(f).await,
            (_, event) => {
                let joined = self.channels.get(&f.topic);
                if joined.is_none_or(|c| f.join_ref.as_deref() != Some(c.join_ref.as_str())) {
                    self.reply_error(&f, "unmatched topic").await
                } else if event == "update" {
                    self.update(f).await
                } else {
                    self.reply_error(&f, "unknown event").await
                }
            }
        }
    }

    /// Counts a frame against the push limit.
    fn within_rate(&mut self) -> bool {
        let limits = &self.shared.limits;
        let now = Instant::now();
        if now.duration_since(self.window_start) >= limits.push_window {
            self.window_start = now;
            self.pushes = 0;
        }
        self.pushes = self.pushes.saturating_add(1);
        self.pushes <= limits.max_pushes
    }

    async fn reply_error(&mut self, f: &Inbound, reason: &str) -> Result<(), Stop> {
        let reply = frame::reply_error(
            f.join_ref.as_deref(),
            f.reference.as_deref(),
            &f.topic,
            reason,
        );
        self.send_text(reply).await
    }

    async fn join(&mut self, f: Inbound) -> Result<(), Stop> {
        let Value::Object(params) = &f.payload else {
            return self.reply_error(&f, "join params must be an object").await;
        };
        let Some(join_ref) = f.join_ref.clone() else {
            return self.reply_error(&f, "a join needs a join_ref").await;
        };
        if f.topic == "phoenix" {
            return self.reply_error(&f, "unmatched topic").await;
        }
        // A second join replaces the first, as Phoenix's server does.
        if let Some(old) = self.channels.remove(&f.topic) {
            let old_ref = old.join_ref.clone();
            drop(old);
            self.send_text(frame::close(&old_ref, &f.topic)).await?;
        }
        if self.channels.len() >= self.shared.limits.max_topics {
            return self.reply_error(&f, "too many topics").await;
        }
        let join = match self.shared.policy.join(&f.topic, params, &self.connection) {
            Ok(join) => join,
            Err(refusal) => return self.reply_error(&f, &refusal.reason).await,
        };
        let tracked = match join {
            Join::Track { key, meta } => {
                let tracker = self.shared.hubs.tracker();
                match tracker.track(&f.topic, &key, meta.clone()) {
                    Ok(guard) => Some(Tracked { key, meta, guard }),
                    Err(e) => return self.reply_error(&f, &e.to_string()).await,
                }
            }
            _ => None,
        };
        let hubs = self.shared.hubs.clone();
        let (membership, mut list, mut seq) =
            hubs.join(&f.topic, self.queue.clone(), self.wake.clone());
        // Like Phoenix, the state lists the joiner itself: a client that
        // moved from another replica would otherwise see its own key
        // leave and come back.
        if let Some(tracked) = &tracked {
            (list, seq) = membership
                .list_with(&tracked.key, &tracked.guard.id(), OWN_JOIN_PATIENCE)
                .await;
        }
        let state = render::state_frame(&list, &f.topic, &join_ref, hubs.enrich());
        let reply = frame::reply_ok(Some(&join_ref), f.reference.as_deref(), &f.topic);
        self.send_text(reply).await?;
        self.channels.insert(
            f.topic.clone(),
            Channel {
                join_ref,
                tracked,
                membership,
                sent_through: seq,
            },
        );
        self.send_text(state).await
    }

    async fn leave(&mut self, f: Inbound) -> Result<(), Stop> {
        let joined = self.channels.get(&f.topic);
        if joined.is_none_or(|c| f.join_ref.as_deref() != Some(c.join_ref.as_str())) {
            return self.reply_error(&f, "unmatched topic").await;
        }
        let Some(channel) = self.channels.remove(&f.topic) else {
            return Ok(());
        };
        let join_ref = channel.join_ref.clone();
        drop(channel);
        let reply = frame::reply_ok(Some(&join_ref), f.reference.as_deref(), &f.topic);
        self.send_text(reply).await?;
        self.send_text(frame::close(&join_ref, &f.topic)).await
    }

    async fn update(&mut self, f: Inbound) -> Result<(), Stop> {
        let Value::Object(payload) = &f.payload else {
            return self
                .reply_error(&f, "update payload must be an object")
                .await;
        };
        let outcome = self.apply_update(&f.topic, payload);
        match outcome {
            Ok(()) => {
                let reply =
                    frame::reply_ok(f.join_ref.as_deref(), f.reference.as_deref(), &f.topic);
                self.send_text(reply).await
            }
            Err(reason) => self.reply_error(&f, &reason).await,
        }
    }

    fn apply_update(&mut self, topic: &str, payload: &Object) -> Result<(), String> {
        let channel = self
            .channels
            .get_mut(topic)
            .ok_or_else(|| "unmatched topic".to_string())?;
        let tracked = channel
            .tracked
            .as_mut()
            .ok_or_else(|| "nothing is tracked on a watch-only join".to_string())?;
        let meta = self
            .shared
            .policy
            .update(
                topic,
                &tracked.key,
                &tracked.meta,
                payload,
                &self.connection,
            )
            .map_err(|refusal| refusal.reason)?;
        tracked
            .guard
            .update(meta.clone())
            .map_err(|e| e.to_string())?;
        tracked.meta = meta;
        Ok(())
    }

    /// A broadcast diff from a hub, unless the list this socket was sent
    /// already holds it or it belongs to an earlier join of the topic.
    async fn outbound(&mut self, out: Out) -> Result<(), Stop> {
        let current = self.channels.get(&*out.topic).is_some_and(|c| {
            c.membership.id() == out.member && out.seq > c.sent_through && !c.membership.lagged()
        });
        if current {
            self.send_text(out.frame).await
        } else {
            Ok(())
        }
    }

    /// Sends a fresh `presence_state` for every topic whose diffs this
    /// socket fell behind on.
    async fn resync(&mut self) -> Result<(), Stop> {
        let enrich = self.shared.hubs.clone();
        let mut states = Vec::new();
        for (topic, channel) in &mut self.channels {
            if channel.membership.lagged() {
                let (list, seq) = channel.membership.resync();
                channel.sent_through = seq;
                states.push(render::state_frame(
                    &list,
                    topic,
                    &channel.join_ref,
                    enrich.enrich(),
                ));
            }
        }
        for state in states {
            self.send_text(state).await?;
        }
        Ok(())
    }
}
