//! `crdts` trait implementations, so a [`State`] plugs into code written
//! against `crdts::CvRDT` and `crdts::CmRDT`.
//!
//! As a `CvRDT` a state merges another state's whole [`State::snapshot`];
//! as a `CmRDT` its operations are [`Delta`]s (what the mutations return).
//! Both traits' `merge`/`apply` cannot fail: call `validate_merge` or
//! `validate_op` first, as `crdts` asks; an operation that would break a
//! limit is otherwise dropped and leaves the state unchanged.

use super::{Delta, Meta, State, StateError};

#[cfg_attr(docsrs, doc(cfg(feature = "crdts")))]
impl<M: Meta> crdts::CvRDT for State<M> {
    type Validation = StateError;

    fn validate_merge(&self, other: &Self) -> Result<(), StateError> {
        self.plan(&other.snapshot()).map(|_| ())
    }

    fn merge(&mut self, other: Self) {
        let _refused_and_unchanged = State::merge(self, other.snapshot());
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "crdts")))]
impl<M: Meta> crdts::CmRDT for State<M> {
    type Op = Delta<M>;
    type Validation = StateError;

    fn validate_op(&self, op: &Delta<M>) -> Result<(), StateError> {
        self.plan(op).map(|_| ())
    }

    fn apply(&mut self, op: Delta<M>) {
        let _refused_and_unchanged = State::merge(self, op);
    }
}

#[cfg(test)]
mod tests {
    use crdts::{CmRDT, CvRDT};

    use crate::{Incarnation, ReplicaId, ReplicaName, State};

    fn state(name: &str) -> State<u32> {
        State::new(ReplicaId::new(
            ReplicaName::new(name).unwrap(),
            Incarnation::new(1, 1),
        ))
    }

    #[test]
    fn cvrdt_merge_and_cmrdt_apply_agree_with_merge() {
        let mut a = state("a");
        let (_, change) = a.track("t", "k", 1).unwrap();
        let mut by_state = state("b");
        CvRDT::validate_merge(&by_state, &a).unwrap();
        CvRDT::merge(&mut by_state, a.clone());
        let mut by_op = state("c");
        by_op.validate_op(change.delta()).unwrap();
        by_op.apply(change.into_delta());
        assert_eq!(by_state.count("t"), 1);
        assert_eq!(by_op.count("t"), 1);
        assert_eq!(by_state.context(a.replica()), by_op.context(a.replica()));
    }
}
