//! What a retry changes, decided once for every backend: a backend reads
//! the tasks concerned ([`RetryNode`]) inside its transaction, and
//! [`plan_retry`] says which of them go back to ENQUEUED or BLOCKED.

use std::collections::{BTreeSet, HashMap};

use crate::work::{TaskId, TaskState};

/// A task a retry may change, as its backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryNode {
    /// Its state.
    pub(crate) state: TaskState,
    /// The tasks it runs after, with their states.
    pub(crate) parents: Vec<(TaskId, TaskState)>,
    /// Its dependents that ended because of it: FAILED or CANCELLED, their
    /// error naming this task as the cause ([`cause`]).
    pub(crate) ended_by_it: Vec<TaskId>,
}

/// The error a dependent records when task `parent` it runs after ends in
/// `state` (FAILED or CANCELLED), and ends it too: what tells a retry that
/// the dependent ended because of `parent`.
pub(crate) fn cause(parent: TaskId, state: TaskState) -> String {
    match state {
        TaskState::Failed => format!("task {parent} that this task runs after failed"),
        _ => format!("task {parent} that this task runs after was cancelled"),
    }
}

/// The tasks a retry of `seeds` (the FAILED and CANCELLED tasks its query
/// matched) changes, by id, with each one's new state. `nodes` holds each
/// seed and every task reachable from one through
/// [`RetryNode::ended_by_it`].
///
/// The seeds and those dependents come back; then any of them whose
/// prerequisite is FAILED or CANCELLED and not coming back is left out
/// (it could never run), until none is. What comes back is ENQUEUED when
/// every task it runs after has SUCCEEDED, else BLOCKED (it waits for them:
/// unfinished ones, or ones coming back with it).
pub(crate) fn plan_retry(seeds: &[TaskId], nodes: &HashMap<TaskId, RetryNode>) -> Vec<(TaskId, TaskState)> {
    let ended = |s: TaskState| matches!(s, TaskState::Failed | TaskState::Cancelled);
    let mut back: BTreeSet<TaskId> = BTreeSet::new();
    let mut todo: Vec<TaskId> = seeds.to_vec();
    while let Some(id) = todo.pop() {
        let Some(node) = nodes.get(&id) else { continue };
        if ended(node.state) && back.insert(id) {
            todo.extend(node.ended_by_it.iter().copied());
        }
    }
    loop {
        let stuck: Vec<TaskId> = back
            .iter()
            .copied()
            .filter(|id| nodes[id].parents.iter().any(|(p, s)| ended(*s) && !back.contains(p)))
            .collect();
        if stuck.is_empty() {
            break;
        }
        for id in stuck {
            back.remove(&id);
        }
    }
    back.into_iter()
        .map(|id| {
            let waits = nodes[&id].parents.iter().any(|(_, s)| *s != TaskState::Succeeded);
            (id, if waits { TaskState::Blocked } else { TaskState::Enqueued })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    fn node(state: TaskState, parents: &[(TaskId, TaskState)], ended_by_it: &[TaskId]) -> RetryNode {
        RetryNode {
            state,
            parents: parents.to_vec(),
            ended_by_it: ended_by_it.to_vec(),
        }
    }

    #[test]
    fn a_retried_parent_brings_back_its_chain_blocked_behind_it() {
        // 1 failed; 2 and 3 (after 2) failed because of it; 4 after 2 and
        // 5, which failed on its own and is not retried.
        let nodes = HashMap::from([
            (1, node(Failed, &[], &[2])),
            (2, node(Failed, &[(1, Failed)], &[3, 4])),
            (3, node(Failed, &[(2, Failed)], &[])),
            (4, node(Failed, &[(2, Failed), (5, Failed)], &[])),
        ]);
        assert_eq!(
            plan_retry(&[1], &nodes),
            vec![(1, Enqueued), (2, Blocked), (3, Blocked)]
        );
    }

    #[test]
    fn a_task_whose_prerequisite_stays_failed_is_not_retried() {
        let nodes = HashMap::from([(2, node(Cancelled, &[(1, Failed), (0, Succeeded)], &[]))]);
        assert_eq!(plan_retry(&[2], &nodes), vec![]);
        let nodes = HashMap::from([(2, node(Cancelled, &[(1, Running), (0, Succeeded)], &[]))]);
        assert_eq!(plan_retry(&[2], &nodes), vec![(2, Blocked)]);
    }
}
