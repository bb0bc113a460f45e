//! What the tests check a run against: the ground truth, each host's
//! replayed diffs, each replica's prefix views.

use std::collections::BTreeSet;

use super::*;

impl Sim {
    /// The ground truth as rows.
    pub fn truth_rows(&self) -> BTreeSet<Row> {
        self.truth
            .iter()
            .map(|(id, (t, k, m))| (t.clone(), k.clone(), id.clone(), *m))
            .collect()
    }

    /// Every running host lists exactly the ground truth. The error names
    /// the first host that does not and what differs.
    pub fn converged(&self) -> Result<(), String> {
        let truth = self.truth_rows();
        for h in 0..self.hosts.len() {
            let Some(node) = self.hosts[h].node.as_ref() else {
                continue;
            };
            let listed = rows(node.state());
            if listed != truth {
                let missing: Vec<_> = truth.difference(&listed).take(3).collect();
                let extra: Vec<_> = listed.difference(&truth).take(3).collect();
                return Err(format!(
                    "host {h} at {:?}: {} listed vs {} true; missing {missing:?}; extra {extra:?}",
                    self.now,
                    listed.len(),
                    truth.len()
                ));
            }
        }
        Ok(())
    }

    /// Whether every running host lists exactly the ground truth, as
    /// [`Sim::converged`] checks, cheaper to poll: the counts of presences
    /// come first, and they tell most hosts still converging apart without
    /// building anyone's rows.
    pub fn is_converged(&self) -> bool {
        let counts_agree = self.hosts.iter().all(|host| {
            host.node
                .as_ref()
                .is_none_or(|n| n.state().len() == self.truth.len())
        });
        counts_agree && self.converged().is_ok()
    }

    /// Each running host's replayed diffs equal its lists.
    pub fn diffs_replay(&self) -> Result<(), String> {
        for (h, host) in self.hosts.iter().enumerate() {
            let Some(node) = host.node.as_ref() else {
                continue;
            };
            let listed: BTreeSet<Row> = rows(node.state());
            let replayed: BTreeSet<Row> = host
                .replay
                .iter()
                .map(|((t, id), (k, m))| (t.clone(), k.clone(), id.clone(), *m))
                .collect();
            if listed != replayed {
                return Err(format!(
                    "host {h}: diffs replay to {} rows, lists show {}",
                    replayed.len(),
                    listed.len()
                ));
            }
        }
        Ok(())
    }

    /// For each replica R shown by `host`: its rows equal R's own sub-state
    /// at the counter held, and that counter never went back while shown.
    pub(super) fn check_prefix_views(&mut self, host: usize) {
        let Some(node) = self.hosts[host].node.as_ref() else {
            return;
        };
        let all = rows(node.state());
        let mut by_replica: BTreeMap<ReplicaId, BTreeSet<Row>> = BTreeMap::new();
        for row in all {
            by_replica
                .entry(row.2.replica().clone())
                .or_default()
                .insert(row);
        }
        let shown: Vec<ReplicaId> = node
            .replicas()
            .filter(|(_, s)| *s == ReplicaStatus::Up)
            .map(|(id, _)| id.clone())
            .collect();
        for r in shown {
            let counter = node
                .state()
                .context(&r)
                .map_or(0, |c| c.contiguous_prefix());
            let rows = by_replica.remove(&r).unwrap_or_default();
            let Some(history) = self.history.get(&r) else {
                continue;
            };
            let expected = history
                .range(..=counter)
                .next_back()
                .map(|(_, s)| s.clone())
                .unwrap_or_default();
            assert_eq!(
                &rows, &*expected,
                "host {host} shows {r:?} at counter {counter} not as it was then"
            );
            let last = self.shown.entry((host, r.clone())).or_insert(0);
            assert!(
                counter >= *last,
                "host {host} shows {r:?} at counter {counter} after {last}"
            );
            *last = counter;
        }
        let node = self.hosts[host].node.as_ref().expect("running");
        for (id, s) in node.replicas() {
            if s != ReplicaStatus::Up {
                self.shown.remove(&(host, id.clone()));
            }
        }
    }

    /// The bytes of one transfer of the whole cluster's state, as one
    /// snapshot encodes it.
    pub fn whole_state_bytes(&self) -> usize {
        let h = (0..self.hosts.len())
            .find(|&h| self.is_up(h))
            .expect("a host runs");
        attendance::wire::encode(&self.node(h).state().snapshot())
            .expect("encodes")
            .len()
    }
}
