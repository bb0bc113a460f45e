//! The start-up check: may this replica publish and subscribe on its three
//! subjects? A second connection with the same credentials subscribes to
//! them too; each sends the other a probe on every subject. A subject the
//! server refuses fails the start, naming it, rather than leaving a replica
//! that hears no one or that no one hears.

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::broker::{self, Shared};
use super::config::NatsError;
use super::frame::{self, Framer};
use super::subject::Stream;
use crate::transport::TransportError;

/// Rounds of probes before the start fails, within `connect_timeout`.
const ATTEMPTS: u32 = 2;

/// Runs the check. `main_probed` turns true per stream when the main
/// connection received the second one's probe; `send_main_probe` has the
/// main connection send its own.
pub(crate) async fn check(
    shared: &Shared,
    nonce: &Bytes,
    mut main_probed: watch::Receiver<[bool; 3]>,
    send_main_probe: impl Fn(),
) -> Result<(), TransportError> {
    let options = broker::base_options(shared)
        .await?
        .name(format!("attendance {} start-up check", shared.me));
    let second = broker::connect_with(shared, options).await?;
    let subs = broker::subscribe(shared, &second).await?;
    // The second connection listens before the main one speaks.
    let _ = tokio::time::timeout(shared.config.connect_timeout, second.flush()).await;
    let subjects = &shared.subjects;
    let me = subjects.my_token();
    let mut framer = Framer::new(&shared.me, shared.key.clone());
    let mut send_probes = async || {
        send_main_probe();
        for (stream, subject, reply) in subjects.own() {
            for f in framer
                .frames(stream, &subject, true, nonce, 1 << 16)
                .into_iter()
                .flatten()
            {
                // A refusal shows as a probe that never arrives.
                let _ = match &reply {
                    Some(reply) => {
                        second
                            .publish_with_reply(subject.clone(), reply.clone(), f)
                            .await
                    }
                    None => second.publish(subject.clone(), f).await,
                };
            }
        }
        let _ = tokio::time::timeout(shared.config.connect_timeout, second.flush()).await;
    };

    let (second_probed, heard) = watch::channel([false; 3]);
    let [bcast, rpc, inbox] = subs;
    let listen = async {
        let mut merged = futures_util::stream::select_all([
            bcast.map(|m| (Stream::Broadcast, m)).boxed(),
            rpc.map(|m| (Stream::Request, m)).boxed(),
            inbox.map(|m| (Stream::Inbox, m)).boxed(),
        ]);
        while let Some((stream, m)) = merged.next().await {
            let ours = frame::open(shared.key.as_ref(), &m.subject, &m.payload)
                .is_ok_and(|f| f.sender == shared.me && f.probe && f.payload == nonce.as_ref());
            if ours {
                second_probed.send_modify(|p| p[stream.index()] = true);
            }
        }
    };
    tokio::pin!(listen);
    let mut errors = shared.server_error.subscribe();
    let mut heard_all = heard.clone();
    let refused = |e: &Option<String>| {
        e.as_deref()
            .is_some_and(|e| e.to_ascii_lowercase().contains("permissions violation"))
    };
    let all = |p: &[bool; 3]| p.iter().all(|b| *b);
    // NATS delivers at most once: probes that did not arrive, with no
    // refusal from the server, are sent again before the start fails.
    let wait = shared.config.connect_timeout / ATTEMPTS;
    for _ in 0..ATTEMPTS {
        send_probes().await;
        // Each borrow ends at once: the channels' senders must never wait.
        let both = async {
            let main = async { main_probed.wait_for(all).await.is_ok() };
            let second = async { heard_all.wait_for(all).await.is_ok() };
            let (a, b) = tokio::join!(main, second);
            a && b
        };
        tokio::select! {
            ok = both => if ok {
                return Ok(());
            } else {
                break;
            },
            () = &mut listen => break,
            _ = errors.wait_for(refused) => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    let error = shared.server_error.borrow().clone();
    // The server names the subject in quotes.
    let named = error
        .as_deref()
        .filter(|e| refused(&Some(e.to_string())))
        .and_then(|e| e.split('"').nth(1))
        .map(str::to_string);
    let (got, sent) = (*main_probed.borrow(), *heard.borrow());
    let failed = Stream::ALL
        .into_iter()
        .find(|s| !got[s.index()] || !sent[s.index()]);
    let subject = named.unwrap_or_else(|| match failed {
        Some(Stream::Broadcast) | None => subjects.broadcast(),
        Some(Stream::Request) => subjects.request(me),
        Some(Stream::Inbox) => subjects.inbox(me),
    });
    let detail = error.map_or_else(String::new, |e| format!(": {e}"));
    Err(NatsError::Permissions { subject, detail }.into())
}
