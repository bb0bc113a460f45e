//! The driver task: feeds the protocol its deadlines and the transport's
//! events, does the work the protocol leaves to it outside the locks, and
//! hands the transport what the protocol sends.
//!
//! The driver is the only one that changes other replicas' presences, one
//! thing at a time: a merge prepared outside the locks finds the shards as
//! it left them. What takes long runs on tokio's blocking threads, so a
//! current-thread runtime keeps serving the application meanwhile, and
//! the locks are taken only to swap the result in.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::events::ReplicaEvent;
use super::store::{Deferred, Garbage, build, prepare};
use super::{Command, Driven, Shared};
use crate::protocol::{Built, Destination, Event, Work, decode};
use crate::transport::{Transport, TransportEvent};
use crate::{Meta, ReplicaId};

/// Messages at least this long are decoded on a blocking thread.
const DECODE_APART: usize = 64 << 10;

/// Garbage weighing more than this (presences) is freed on a blocking
/// thread.
const FREE_APART: usize = 4096;

type Outgoing = Vec<(Destination, Bytes)>;

pub(crate) async fn drive<M, T>(
    shared: Arc<Shared<M>>,
    mut transport: T,
    mut commands: mpsc::Receiver<Command>,
) where
    M: Meta + Send + Sync + 'static,
    T: Transport,
{
    #[cfg(feature = "metrics")]
    let mut exporter =
        super::metrics_export::Exporter::new(shared.lock().node.config().broadcast_period);
    loop {
        let deadline = shared.origin + shared.lock().node.poll_timeout();
        let outgoing = tokio::select! {
            command = commands.recv() => match command {
                Some(Command::AddPeer(address, reply)) => {
                    let _ = reply.send(transport.add_peer(address));
                    Vec::new()
                }
                Some(Command::Shutdown(done)) => {
                    leave(&shared, &mut transport).await;
                    let _ = done.send(());
                    return;
                }
                // Every handle is gone: leave as on shutdown.
                None => {
                    leave(&shared, &mut transport).await;
                    return;
                }
            },
            event = transport.recv() => {
                let Some(event) = event else {
                    tracing::warn!("transport closed");
                    // Through `with_node`: subscribers are woken to their end.
                    drop(with_node(&shared, |driven, _| shared.stop(driven)).await);
                    return;
                };
                on_event(&shared, event).await
            }
            () = tokio::time::sleep_until(deadline) => {
                #[cfg(feature = "metrics")]
                exporter.tick(&shared);
                with_node(&shared, |driven, now| driven.node.handle_timeout(now)).await
            }
        };
        send(&mut transport, outgoing);
        do_work(&shared, &mut transport).await;
    }
}

async fn on_event<M>(shared: &Arc<Shared<M>>, event: TransportEvent) -> Outgoing
where
    M: Meta + Send + Sync + 'static,
{
    match event {
        TransportEvent::Connected(peer) => {
            with_node(shared, |driven, now| {
                tracing::debug!(%peer, "link up");
                driven.peers_up += 1;
                driven.node.peer_connected(now, peer);
            })
            .await
        }
        TransportEvent::Message { from, bytes } => {
            let max = shared.max_message_bytes;
            let len = bytes.len();
            let decoded = if len >= DECODE_APART {
                let decoding = tokio::task::spawn_blocking(move || decode::<M>(&bytes, max));
                match decoding.await {
                    Ok(decoded) => decoded,
                    Err(_) => return Vec::new(),
                }
            } else {
                decode::<M>(&bytes, max)
            };
            with_node(shared, |driven, now| {
                if let Err(error) = driven.node.handle_decoded(now, &from, decoded, len) {
                    refused(driven, &from, &error);
                }
            })
            .await
        }
        TransportEvent::LinkLost(peer) => {
            with_node(shared, |driven, now| {
                tracing::debug!(%peer, "link lost");
                driven.peers_up = driven.peers_up.saturating_sub(1);
                driven.node.link_lost(now, &peer);
            })
            .await
        }
    }
}

/// Logs a refused message, a few a second (every one is counted in the
/// protocol's metrics).
fn refused<M: Meta>(driven: &mut Driven<M>, from: &ReplicaId, error: &dyn std::fmt::Display) {
    let (log, unlogged) = driven.refusal_log.take();
    if unlogged > 0 {
        tracing::warn!(unlogged, "refused messages not logged in the last second");
    }
    if log {
        tracing::warn!(%error, peer = %from, "message refused");
    }
}

/// Runs `f` on the node under its lock, then hands its events out, and
/// returns what it wants sent. After the lock, the peers it decided to
/// show, hide or drop with large diffs are changed, and garbage is freed.
async fn with_node<M, R>(
    shared: &Arc<Shared<M>>,
    f: impl FnOnce(&mut Driven<M>, std::time::Duration) -> R,
) -> Outgoing
where
    M: Meta + Send + Sync + 'static,
{
    let (outgoing, mut garbage, mut woken, deferred) = {
        let mut driven = shared.lock();
        let now = shared.now();
        f(&mut driven, now);
        dispatch(&mut driven);
        let outgoing: Outgoing = std::iter::from_fn(|| driven.node.poll_transmit())
            .map(|t| (t.destination, Bytes::from(t.bytes)))
            .collect();
        let store = driven.node.state_mut();
        let deferred = store.take_deferred();
        (outgoing, store.take_garbage(), store.take_woken(), deferred)
    };
    if !deferred.is_empty() {
        // On a blocking thread, and waited for: nothing changes the peers
        // they name meanwhile, as only this task does.
        let run = move || deferred.into_iter().map(Deferred::run).collect::<Vec<_>>();
        if let Ok(done) = tokio::task::spawn_blocking(run).await {
            for (wake, freed) in done {
                woken.absorb(wake);
                garbage.extend(freed);
            }
        }
    }
    if woken.counting {
        let shards = shared.shards.clone();
        drop(tokio::task::spawn_blocking(move || {
            for shard in shards.iter() {
                drop(shard.count_keys());
            }
        }));
    }
    woken.wake();
    free(garbage);
    outgoing
}

/// Frees what was dropped from the shards; large amounts on a blocking
/// thread, so that the async threads do not stall on it.
fn free<M: Meta + Send + Sync + 'static>(garbage: Vec<Garbage<M>>) {
    if garbage.is_empty() {
        return;
    }
    let weight: usize = garbage
        .iter()
        .map(|g| match g {
            Garbage::State(s) if Arc::strong_count(s) == 1 => s.len(),
            Garbage::State(_) => 0,
            Garbage::Diff(d) => d.joins().count() + d.leaves().count(),
            Garbage::Topic(t) => t.joins().len() + t.leaves().len(),
            Garbage::Delta(d) => d.entry_count(),
            Garbage::Staged(s) => s.weight(),
        })
        .sum();
    if weight > FREE_APART {
        drop(tokio::task::spawn_blocking(move || drop(garbage)));
    }
}

/// Hands the protocol's events to logs and to the guards.
fn dispatch<M: Meta>(driven: &mut Driven<M>) {
    while let Some(event) = driven.node.poll_event() {
        match event {
            // The shards publish the diffs themselves, as they change.
            Event::Diff(_) => {}
            Event::ReplicaUp(id) => {
                tracing::info!(peer = %id, "replica up");
                announce(driven, ReplicaEvent::Up(id));
            }
            Event::ReplicaDown(id) => {
                tracing::warn!(peer = %id, "replica down");
                announce(driven, ReplicaEvent::Down(id));
            }
            Event::ReplicaPurged(id, reason) => {
                tracing::info!(peer = %id, ?reason, "replica purged");
                announce(driven, ReplicaEvent::Purged(id, reason));
            }
            // The store renamed the guards' presences as it moved them.
            Event::Reincarnated { replica, .. } => {
                tracing::warn!(%replica, "a newer incarnation of this name appeared: moved above it");
                announce(driven, ReplicaEvent::Reincarnated(replica));
            }
            Event::NameConflict(id) => {
                tracing::error!(replica = %id, "another process runs under this replica's name");
                announce(driven, ReplicaEvent::NameConflict(id));
            }
        }
    }
    let refused = driven.node.metrics().refused_entries;
    if refused > driven.refused_seen {
        tracing::warn!(
            refused = refused - driven.refused_seen,
            "presences over this replica's topic or key limits were not taken"
        );
        driven.refused_seen = refused;
    }
}

fn announce<M: Meta>(driven: &mut Driven<M>, event: ReplicaEvent) {
    driven.node.state_mut().announce(event);
}

fn send<T: Transport>(transport: &mut T, outgoing: Outgoing) {
    for (to, bytes) in outgoing {
        transport.send(&to, bytes);
    }
}

/// Does the work the protocol left, one piece at a time: the heavy part on
/// a blocking thread, outside every lock, then the result handed back.
async fn do_work<M, T>(shared: &Arc<Shared<M>>, transport: &mut T)
where
    M: Meta + Send + Sync + 'static,
    T: Transport,
{
    loop {
        let Some(work) = shared.lock().node.poll_work() else {
            return;
        };
        let outgoing = match work {
            Work::Answer(work) => answer(shared, work).await,
            Work::Serve(work) => serve(shared, work).await,
            Work::Broadcast(work) => {
                let encoded = tokio::task::spawn_blocking(move || work.encode()).await;
                match encoded {
                    Ok((to, messages)) => {
                        with_node(shared, |driven, _| {
                            driven.node.finish_broadcast(to, messages);
                        })
                        .await
                    }
                    Err(_) => Vec::new(),
                }
            }
        };
        send(transport, outgoing);
    }
}

/// A whole catch-up answer: decoded, and its large merges made, outside
/// the locks; then applied.
async fn answer<M>(shared: &Arc<Shared<M>>, work: crate::protocol::AnswerWork) -> Outgoing
where
    M: Meta + Send + Sync + 'static,
{
    let holder = work.holder.clone();
    let batch = work.batch;
    let decoded = match tokio::task::spawn_blocking(move || work.decode::<M>()).await {
        Ok(decoded) => decoded,
        Err(_) => return Vec::new(),
    };
    let (decoded, staged) = match decoded {
        Ok(delta) => {
            let (standing, own) = {
                let driven = shared.lock();
                let store = driven.node.state();
                let standing: BTreeMap<ReplicaId, (bool, usize)> = delta
                    .replicas()
                    .map(|r| (r.clone(), store.standing(r)))
                    .collect();
                (standing, driven.node.id().name().clone())
            };
            let shards = shared.shards.clone();
            let max = shared.common.limits.presences_per_replica();
            let preparing = tokio::task::spawn_blocking(move || {
                let staged = prepare(&shards, &delta, &own, &standing, max);
                (delta, staged)
            });
            match preparing.await {
                Ok((delta, staged)) => (Ok(delta), staged),
                Err(_) => return Vec::new(),
            }
        }
        Err(e) => (Err(e), BTreeMap::new()),
    };
    with_node(shared, |driven, now| {
        driven.node.state_mut().stage(staged);
        let result = driven.node.complete_answer(now, &holder, batch, decoded);
        driven.node.state_mut().end_staging();
        if let Err(error) = result {
            refused(driven, &holder, &error);
        }
    })
    .await
}

/// A catch-up request: its parts read from the shards and encoded outside
/// the node's lock; then sent.
async fn serve<M>(shared: &Arc<Shared<M>>, work: crate::protocol::ServeWork) -> Outgoing
where
    M: Meta + Send + Sync + 'static,
{
    let (plans, own) = {
        let driven = shared.lock();
        let plans = driven
            .node
            .state()
            .serve_plan(&work.items, work.max_catchup_bytes);
        (plans, driven.node.id().clone())
    };
    let shards = shared.shards.clone();
    let common = shared.common.clone();
    let building = tokio::task::spawn_blocking(move || {
        let built = build(&shards, &common, &own, plans, work.max_catchup_bytes);
        let mut declined = 0;
        let mut parts = Vec::new();
        for ((replica, since, _), built) in work.items.iter().zip(built) {
            match built {
                Built::Part(delta, full) => parts.push((replica.clone(), *since, delta, full)),
                Built::Declined => declined += 1,
                Built::Nothing => {}
            }
        }
        work.encode(parts, declined)
    });
    match building.await {
        Ok(answer) => with_node(shared, |driven, now| driven.node.finish_serve(now, answer)).await,
        Err(_) => Vec::new(),
    }
}

/// Tells every peer this replica leaves, and closes the transport.
async fn leave<M, T>(shared: &Arc<Shared<M>>, transport: &mut T)
where
    M: Meta + Send + Sync + 'static,
    T: Transport,
{
    let outgoing = with_node(shared, |driven, now| {
        driven.node.leave(now);
        shared.stop(driven);
    })
    .await;
    send(transport, outgoing);
    transport.close().await;
    tracing::info!("tracker stopped");
}
