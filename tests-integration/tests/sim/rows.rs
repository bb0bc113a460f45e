//! What a state lists, as a set of rows that tests compare: the simulator's
//! checks and the model checker's properties.

use std::collections::BTreeSet;

use attendance::{Meta, PresenceId, State};

/// One presence as lists show it: topic, key, id, meta.
pub type Row<M> = (String, String, PresenceId, M);

/// The lists of a state as rows.
pub fn rows<M: Meta + Ord>(state: &State<M>) -> BTreeSet<Row<M>> {
    let mut out = BTreeSet::new();
    for (topic, _) in state.topics() {
        for key in state.list(topic.as_str()) {
            for p in key.presences {
                out.insert((
                    topic.as_str().to_string(),
                    key.key.as_str().to_string(),
                    p.id.clone(),
                    p.meta.clone(),
                ));
            }
        }
    }
    out
}
