//! Chat-node liveness: the leader's soft state and its failure detector.
//!
//! Heartbeats never touch Raft. The leader keeps, in memory, when it last heard from each
//! node and the load the node reported ([`Liveness`]); only changes of fact become catalog
//! commands: `NodeDown` from [`detect_failures`] when a node that serves sessions (`Up` or
//! `Drained`) has been silent for `node_timeout_ms`, `NodeUp` from the heartbeat handler
//! when a `Down` (or `DrainedDown`) node speaks again. A drained node is watched too: it
//! still serves its sessions, and one that died must leave every room's presence
//! (docs/REPLICATION.md, "A drained node that goes silent").
//!
//! The memory belongs to one term: a member that becomes leader starts empty, counts every
//! node as heard from at that moment, and marks nothing down during a grace period of one
//! full timeout, so the nodes have time to find the new leader. A node that (re)enters
//! `Up` is likewise counted as heard from when the detector first sees it up.
//!
//! A decision is only as good as the leader's view (docs/REPLICATION.md, "Control
//! decisions"): the detector forgets everything and starts a new grace period whenever it
//! was not running for a while (the process was paused or starved: the heartbeats it
//! missed are not the nodes' fault) or the member lost its majority (it may be deposed
//! and the nodes heartbeat the new leader); and it proposes `NodeDownInTerm` with the term
//! it observed, which the catalog refuses if it commits in any other term.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::catalog::{CatalogError, ChatNodeId, Command, CommandOutput, NodeStatus};
use super::raft::state_machine::read_state;
use super::AppState;
use crate::protocol::NodeLoad;

/// How often the detector looks for silent nodes (and refreshes the node gauges).
pub const DETECT_EVERY: Duration = Duration::from_millis(500);

/// What the leader knows about one node from its heartbeats.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The last heartbeat, or when the detector started counting the node.
    pub at: Instant,
    /// The load of the last heartbeat; `None` until the first one in this term.
    pub load: Option<NodeLoad>,
    /// The routing-table version the node held when it sent that heartbeat (0: none yet),
    /// so an operator can tell when every node has acted on a change (e.g. a drain).
    pub routes_version: u64,
}

/// The leader's in-memory record of node heartbeats, cheap to clone. A `std` mutex: it is
/// never held across an `.await`.
#[derive(Clone, Default)]
pub struct Liveness(Arc<Mutex<Memory>>);

#[derive(Default)]
struct Memory {
    /// The term the entries belong to; `None` while this member does not lead.
    term: Option<u64>,
    /// When this member noticed it leads in `term`: the start of the grace period.
    since: Option<Instant>,
    seen: BTreeMap<ChatNodeId, Seen>,
    /// The nodes that were `Up` at the detector's previous look.
    was_up: BTreeSet<ChatNodeId>,
}

impl Liveness {
    /// Records a heartbeat received while leading in `term`.
    pub fn heartbeat(&self, term: u64, node: ChatNodeId, load: NodeLoad, routes_version: u64, now: Instant) {
        self.leading(term, now).seen.insert(node, Seen { at: now, load: Some(load), routes_version });
    }

    /// What is known in `term` (empty if this member's memory is of another term).
    pub fn snapshot(&self, term: u64) -> BTreeMap<ChatNodeId, Seen> {
        let memory = self.lock();
        if memory.term == Some(term) {
            memory.seen.clone()
        } else {
            BTreeMap::new()
        }
    }

    /// The nodes among `up` (those that serve sessions: `Up` or `Drained`) that have been
    /// silent for `timeout`, leading in `term`. During the grace period after taking the
    /// lead, none.
    pub fn overdue(&self, term: u64, up: &[ChatNodeId], timeout: Duration, now: Instant) -> Vec<ChatNodeId> {
        let mut memory = self.leading(term, now);
        for node in up {
            let newly_up = !memory.was_up.contains(node);
            let seen = memory.seen.entry(*node).or_insert(Seen { at: now, load: None, routes_version: 0 });
            if newly_up {
                // It was down, pending or unknown a moment ago: count from now, not from
                // the heartbeat it sent before it went away.
                seen.at = seen.at.max(now);
            }
        }
        memory.was_up = up.iter().copied().collect();
        let in_grace = memory.since.is_some_and(|since| now.duration_since(since) < timeout);
        if in_grace {
            return Vec::new();
        }
        up.iter()
            .copied()
            .filter(|node| memory.seen.get(node).is_some_and(|s| now.duration_since(s.at) >= timeout))
            .collect()
    }

    /// Forgets everything: this member no longer leads.
    pub fn step_down(&self) {
        *self.lock() = Memory::default();
    }

    /// The memory for `term`, reset first if it belonged to another term.
    fn leading(&self, term: u64, now: Instant) -> MutexGuard<'_, Memory> {
        let mut memory = self.lock();
        if memory.term != Some(term) {
            *memory = Memory { term: Some(term), since: Some(now), ..Memory::default() };
        }
        memory
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // Every critical section leaves the memory consistent, so a poisoned lock is fine.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs on every member until shutdown; while the member leads, marks silent nodes down.
/// Also keeps the node gauges current.
pub async fn detect_failures(app: AppState, mut shutdown: watch::Receiver<bool>) {
    let timeout = Duration::from_millis(app.config.node_timeout_ms);
    let member = app.id.to_string();
    let mut last_look = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DETECT_EVERY) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        export_node_metrics(&app, &member);
        let now = Instant::now();
        let was_away = now.duration_since(last_look) > DETECT_EVERY * 2;
        last_look = now;
        let leader = super::loads::leader(&app);
        if leader.id != Some(app.id) || !leader.holds_quorum || was_away {
            if was_away && leader.id == Some(app.id) {
                tracing::warn!("the failure detector was not running for a while; starting a new detection period");
            }
            app.liveness.step_down();
            continue;
        }
        let term = leader.term;
        let up: Vec<ChatNodeId> = read_state(&app.state)
            .catalog
            .nodes
            .values()
            .filter(|node| matches!(node.status, NodeStatus::Up | NodeStatus::Drained))
            .map(|node| node.id)
            .collect();
        for node in app.liveness.overdue(term, &up, timeout, now) {
            let written = tokio::select! {
                written = app.writer.write(Command::NodeDownInTerm { node, term }) => written,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match written {
                Ok(CommandOutput::NodeDown { node, .. }) if node.status == NodeStatus::DrainedDown => {
                    // Nothing to fail over: a drain moved its rooms away.
                    tracing::warn!(
                        node = node.id,
                        name = %node.name,
                        silent_ms = timeout.as_millis() as u64,
                        "a drained chat node went silent: its sessions no longer count"
                    );
                }
                Ok(CommandOutput::NodeDown { node, owners_moved, replicas_moved }) => {
                    metrics::counter!("districhat_node_failovers_total", "member" => member.clone()).increment(1);
                    tracing::warn!(
                        node = node.id,
                        name = %node.name,
                        rooms_moved = owners_moved,
                        replicas_moved,
                        silent_ms = timeout.as_millis() as u64,
                        "a chat node went silent: marked it down and moved its rooms"
                    );
                }
                Ok(other) => tracing::error!(?other, "NodeDown returned an unexpected output"),
                Err(super::write::WriteError::Rejected(e @ CatalogError::StaleDecision { .. })) => {
                    tracing::warn!(node, error = %e, "a node-down decision of an older term was refused");
                    app.liveness.step_down();
                }
                Err(e) => tracing::warn!(node, error = %e, "could not mark a silent chat node down yet; will retry"),
            }
        }
    }
}

/// Gauges from this member's catalog: nodes per status, rooms owned and replicated per node.
fn export_node_metrics(app: &AppState, member: &str) {
    let state = read_state(&app.state);
    let catalog = &state.catalog;
    for (label, status) in [
        ("up", NodeStatus::Up),
        ("down", NodeStatus::Down),
        ("pending", NodeStatus::Pending),
        ("drained", NodeStatus::Drained),
        ("drained_down", NodeStatus::DrainedDown),
    ] {
        let count = catalog.nodes.values().filter(|node| node.status == status).count();
        metrics::gauge!("districhat_nodes", "member" => member.to_string(), "status" => label).set(count as f64);
    }
    for (node, (owned, replicated)) in catalog.node_room_counts() {
        let node = node.to_string();
        metrics::gauge!("districhat_node_rooms_owned", "member" => member.to_string(), "node" => node.clone())
            .set(owned as f64);
        metrics::gauge!("districhat_node_rooms_replicated", "member" => member.to_string(), "node" => node)
            .set(replicated as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(3);

    #[test]
    fn a_new_leader_waits_one_timeout_then_marks_silent_nodes() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(liveness.overdue(5, &[1, 2], TIMEOUT, at(0)).is_empty());
        liveness.heartbeat(5, 2, NodeLoad::default(), 0, at(2_500));
        assert!(liveness.overdue(5, &[1, 2], TIMEOUT, at(2_900)).is_empty(), "grace period");
        assert_eq!(liveness.overdue(5, &[1, 2], TIMEOUT, at(3_000)), vec![1]);
        assert_eq!(liveness.overdue(5, &[1, 2], TIMEOUT, at(5_500)), vec![1, 2]);
    }

    #[test]
    fn a_new_term_starts_from_scratch_with_a_grace_period() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        liveness.heartbeat(1, 1, NodeLoad { connections: 7, ..NodeLoad::default() }, 0, t0);
        assert_eq!(liveness.snapshot(1)[&1].load.as_ref().map(|load| load.connections), Some(7));
        assert!(liveness.snapshot(2).is_empty());
        let later = t0 + Duration::from_secs(60);
        assert!(liveness.overdue(2, &[1], TIMEOUT, later).is_empty(), "new term: grace");
        assert!(liveness.snapshot(2)[&1].load.is_none(), "the old term's load is forgotten");
        assert_eq!(liveness.overdue(2, &[1], TIMEOUT, later + TIMEOUT), vec![1]);
        liveness.step_down();
        assert!(liveness.snapshot(2).is_empty());
    }

    #[test]
    fn a_node_that_comes_back_up_is_counted_from_then() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        liveness.overdue(1, &[1], TIMEOUT, at(0));
        assert_eq!(liveness.overdue(1, &[1], TIMEOUT, at(4)), vec![1]);
        // Marked down; later it is up again (re-registered) before its next heartbeat.
        assert!(liveness.overdue(1, &[], TIMEOUT, at(5)).is_empty());
        assert!(liveness.overdue(1, &[1], TIMEOUT, at(20)).is_empty(), "counted from its return");
        assert_eq!(liveness.overdue(1, &[1], TIMEOUT, at(23)), vec![1]);
    }
}
