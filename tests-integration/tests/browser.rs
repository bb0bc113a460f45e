//! The demo page in real browsers: Debian's headless `chromium` running the
//! unmodified phoenix.js 1.8.16 against replicas of the demo (in this
//! process, linked over loopback TCP), each serving the Phoenix Channels
//! endpoint and the page. The tests read what the page shows (one
//! `<li data-key data-count>` a key) and what its `Presence` callbacks saw,
//! polling with deadlines.
//!
//! A missing `chromium` or `chromedriver` fails these tests (the README's
//! test command installs both). One browser test runs at a time.

#[path = "browser/driver.rs"]
mod driver;
#[path = "browser/picture.rs"]
mod picture;
#[path = "browser/replica.rs"]
mod replica;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use driver::{Browser, Driver};
use replica::Replica;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Browsers are heavy: one test with browsers at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const DOC: &str = "1";
const TOPIC: &str = "doc:1";

/// The page's list: `[key, tabs]` per key, in the page's order.
const VIEWERS: &str = "return [...document.querySelectorAll('#viewers li')]\
    .map(li => [li.dataset.key, Number(li.dataset.count)])";
/// How many times the page's `Presence` synced.
const SYNCS: &str = "return Number(document.getElementById('syncs').dataset.syncs)";
/// Every `onJoin` and `onLeave` the page saw, in order.
const EVENTS: &str = "return window.presenceEvents";

/// Two replicas, `a` and `b`, linked.
async fn two_replicas() -> (Replica, Replica) {
    let a = Replica::start("a", &[]).await;
    let b = Replica::start("b", &[a.mesh]).await;
    (a, b)
}

/// A new browser showing `user`'s page of the document on `replica`.
async fn page(driver: &Driver, replica: &Replica, user: &str) -> Browser {
    let browser = driver.browser().await;
    browser.open(&replica.url(DOC, user)).await;
    browser
}

fn viewers(expected: &[(&str, u64)]) -> Value {
    Value::Array(expected.iter().map(|(k, n)| json!([k, n])).collect())
}

/// Waits until `browser` lists exactly `expected` (key, tabs), sorted.
async fn until_lists(browser: &Browser, who: &str, expected: &[(&str, u64)]) {
    let expected = viewers(expected);
    browser
        .until(&format!("{who} lists {expected}"), VIEWERS, |v| {
            *v == expected
        })
        .await;
}

async fn syncs(browser: &Browser) -> u64 {
    browser.eval(SYNCS).await.as_u64().expect("a sync count")
}

/// The `onJoin`/`onLeave` events from the `from`-th on, as `kind key`.
async fn events_since(browser: &Browser, from: usize) -> Vec<String> {
    let events = browser.eval(EVENTS).await;
    let events = events.as_array().expect("a list of events");
    events[from.min(events.len())..]
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap_or("?"),
                e["key"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

async fn event_count(browser: &Browser) -> usize {
    browser.eval(EVENTS).await.as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_two_replicas_share_viewers_tabs_updates_and_departures() {
    let _serial = SERIAL.lock().await;
    let driver = Driver::start();
    let (a, b) = two_replicas().await;

    let alice = page(&driver, &a, "alice").await;
    let bob = page(&driver, &b, "bob").await;
    until_lists(&alice, "alice on a", &[("alice", 1), ("bob", 1)]).await;
    until_lists(&bob, "bob on b", &[("alice", 1), ("bob", 1)]).await;

    // A second tab of alice, on the other replica: two metas, one key.
    let alice_tab = page(&driver, &b, "alice").await;
    for (browser, who) in [
        (&alice, "alice on a"),
        (&bob, "bob on b"),
        (&alice_tab, "alice's tab on b"),
    ] {
        until_lists(browser, who, &[("alice", 2), ("bob", 1)]).await;
    }

    // An update is one change: one sync with the new meta, one meta still.
    let (syncs_before, events_before) = (syncs(&alice).await, event_count(&alice).await);
    bob.eval("channel.push('update', {status: 'away'}); return true")
        .await;
    alice
        .until(
            "alice sees bob away",
            "return presenceList().find(v => v.key === 'bob')",
            |bob| bob["metas"][0]["status"] == "away",
        )
        .await;
    // A change made after the update arrives after it: a barrier, so that
    // a second sync for the update would show by now.
    let carol = a
        .tracker
        .track(TOPIC, "carol", json!({}))
        .expect("tracks carol");
    until_lists(
        &alice,
        "alice on a",
        &[("alice", 2), ("bob", 1), ("carol", 1)],
    )
    .await;
    assert_eq!(
        syncs(&alice).await,
        syncs_before + 2,
        "the update synced once"
    );
    assert_eq!(
        events_since(&alice, events_before).await,
        ["join bob", "leave bob", "join carol"],
        "the update joined the new meta and left the old one in one diff"
    );
    drop(carol);

    // Closing a browser makes its user leave everywhere.
    alice_tab.close().await;
    until_lists(&bob, "bob on b", &[("alice", 1), ("bob", 1)]).await;
    bob.close().await;
    until_lists(&alice, "alice on a", &[("alice", 1)]).await;
    alice.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_leaves_after_the_down_period_and_its_restart_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let driver = Driver::start();
    let (a, mut b) = two_replicas().await;

    let alice = page(&driver, &a, "alice").await;
    let bob = page(&driver, &b, "bob").await;
    until_lists(&alice, "alice on a", &[("alice", 1), ("bob", 1)]).await;

    // b crashes: a hides its presences once it finds b gone.
    let (mesh, http) = (b.mesh, b.http);
    b.stop();
    until_lists(&alice, "alice on a", &[("alice", 1)]).await;
    bob.until(
        "bob's page notices",
        "return document.getElementById('state').dataset.state",
        |s| s != "joined",
    )
    .await;

    // b restarts on the same ports as a new incarnation; bob's page
    // reconnects and rejoins by itself.
    let b = Replica::start_on("b", mesh, http, &[a.mesh]).await;
    for (browser, who) in [(&alice, "alice on a"), (&bob, "bob on b")] {
        until_lists(browser, who, &[("alice", 1), ("bob", 1)]).await;
    }
    for replica in [&a, &b] {
        let listed: Vec<(String, usize)> = replica
            .tracker
            .list(TOPIC)
            .iter()
            .map(|g| (g.key.to_string(), g.presences.len()))
            .collect();
        assert_eq!(listed, [("alice".into(), 1), ("bob".into(), 1)]);
    }
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_replica_sees_no_one_else_leave_or_join() {
    let _serial = SERIAL.lock().await;
    let driver = Driver::start();
    let (a, b) = two_replicas().await;

    let alice = page(&driver, &a, "alice").await;
    let bob = page(&driver, &b, "bob").await;
    let carol = page(&driver, &a, "carol").await;
    let everyone = [("alice", 1), ("bob", 1), ("carol", 1)];
    until_lists(&carol, "carol on a", &everyone).await;
    until_lists(&bob, "bob on b", &everyone).await;

    // Carol's page loses its connection to a and reconnects to b (as a
    // load balancer would send it elsewhere). Meanwhile it looks for its
    // own key every millisecond: the key must never vanish.
    let before = event_count(&carol).await;
    carol
        .eval(&format!(
            "window.ownKeyMissing = 0;
             const check = setInterval(() => {{
               if (!presenceList().some(v => v.key === 'carol')) window.ownKeyMissing += 1;
             }}, 1);
             window.stopCheck = () => clearInterval(check);
             socket.endPoint = '{}/websocket';
             socket.conn.close();
             return true",
            b.socket()
        ))
        .await;
    carol
        .until(
            "carol's page rejoins on b",
            "return [document.getElementById('state').dataset.state, socket.endPointURL()]",
            |v| {
                v[0] == "joined"
                    && v[1]
                        .as_str()
                        .is_some_and(|u| u.contains(&b.http.to_string()))
            },
        )
        .await;
    for (browser, who) in [
        (&alice, "alice on a"),
        (&bob, "bob on b"),
        (&carol, "carol on b"),
    ] {
        until_lists(browser, who, &everyone).await;
    }
    let missing = carol.eval("stopCheck(); return ownKeyMissing").await;
    let events = events_since(&carol, before).await;
    assert_eq!(missing, 0, "carol's own key vanished; events: {events:?}");
    assert!(
        events.iter().all(|e| e.ends_with(" carol")),
        "carol's page saw others leave or join: {events:?}"
    );
    for browser in [alice, bob, carol] {
        browser.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_racing_a_join_show_exactly_once() {
    let _serial = SERIAL.lock().await;
    let driver = Driver::start();
    let (a, b) = two_replicas().await;
    let alice = driver.browser().await;

    // b tracks, updates and untracks without pause while alice's page
    // joins on a, again and again: changes fall between the join's
    // subscription and its state.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (tracker, stop) = (b.tracker.clone(), stop.clone());
        tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("user{}", i % 8);
                let guard = tracker.track(TOPIC, &key, json!({"n": i})).expect("tracks");
                guard
                    .update(json!({"n": i, "updated": true}))
                    .expect("updates");
                if i.is_multiple_of(3) {
                    kept.push((key, guard));
                }
                if kept.len() > 6 {
                    drop(kept.remove(0));
                }
                i += 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            kept
        })
    };
    for _ in 0..5 {
        alice.open(&a.url(DOC, "alice")).await;
        alice
            .until(
                "alice's page joins",
                "return document.getElementById('state').dataset.state",
                |s| s == "joined",
            )
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let kept = churn.await.expect("the churn ends");

    // Once a has merged everything, the page shows exactly what a lists:
    // every kept presence once, nothing else.
    let mut expected: BTreeMap<String, u64> = BTreeMap::from([("alice".to_string(), 1)]);
    for (key, _) in &kept {
        *expected.entry(key.clone()).or_default() += 1;
    }
    let expected: Vec<(&str, u64)> = expected.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    until_lists(&alice, "alice on a", &expected).await;
    let refs = alice
        .eval("return presenceList().flatMap(v => v.metas.map(m => m.phx_ref))")
        .await;
    let refs: Vec<&str> = refs
        .as_array()
        .expect("refs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut unique = refs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(refs.len(), unique.len(), "a meta shown twice: {refs:?}");
    drop(kept);
    alice.close().await;
}

/// A picture of two browsers on two replicas, side by side (the README's
/// `docs/phoenix-demo.png`), written to the path in `ATTENDANCE_SCREENSHOT`
/// (relative to the workspace root) when that is set; without it this test
/// only checks that the two pages agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_two_replicas_side_by_side() {
    let _serial = SERIAL.lock().await;
    let driver = Driver::start();
    let (a, b) = two_replicas().await;

    let alice = page(&driver, &a, "alice").await;
    let bob = page(&driver, &b, "bob").await;
    // alice has a second tab, on the other replica.
    let alice_tab = page(&driver, &b, "alice").await;
    for (browser, who) in [(&alice, "alice on a"), (&bob, "bob on b")] {
        until_lists(browser, who, &[("alice", 2), ("bob", 1)]).await;
    }
    if let Some(path) = std::env::var_os("ATTENDANCE_SCREENSHOT") {
        // Relative to the workspace root, not to this package.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        let picture = picture::side_by_side(&alice.screenshot().await, &bob.screenshot().await);
        std::fs::write(&path, picture).expect("writes the picture");
    }
    for browser in [alice, bob, alice_tab] {
        browser.close().await;
    }
}
