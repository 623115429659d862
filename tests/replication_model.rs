//! An explicit-state model checker of room replication (see `docs/REPLICATION.md`), under
//! today's rules ([`Rules::Old`]) and the rules the team will implement ([`Rules::New`]),
//! with each new rule switchable on its own ([`Rule`]).
//!
//! What it models: one room on three chat nodes (A, B, C). The control-plane catalog is one
//! linearizable state: node status (`Up`/`Down`), the room's owner, replica and epoch and,
//! under the new rules, whether the replica is in sync. Each node keeps on disk the room log
//! (seq -> message id) and the room's fence (highest epoch accepted); in memory, its owner
//! task when the catalog view it last fetched makes it the owner (epoch, replica, start
//! phase, pending batch, commit point). Owners run start (fence, `Adopt` rounds, copy one
//! entry per `Replicate`), take one message per batch, and acknowledge on `Stored`.
//! Nondeterminism explored: `NodeDown` for any `Up` node at any time (the failure detector
//! may be wrong and late), `NodeUp` of a running `Down` node, crashes (memory lost, disk
//! kept) and restarts, catalog fetches at any time, owner timeouts at any time, client sends
//! and retries (answered by dedupe), reads from any node that believes it owns the room, and
//! a network that delivers in any order, drops (never delivers), and delivers a bounded
//! number of messages twice.
//!
//! What it abstracts away: real time (a timeout may fire whenever an owner waits); message
//! contents other than their id; batches of more than one message; more than one room (rooms
//! share nothing but node status); the Raft machinery of the catalog; request ids (an answer
//! counts only for the exchange still waiting for it); connections (a crash loses what was
//! addressed to the node, a send to a stopped node is lost); `min_copies = 1` (an owner
//! without a replica takes no sends); the `Adopt` refusal past `MAX_BATCH` entries and the
//! 256-stamp tail limit (neither binds with a few messages); fan-out, presence, drains.
//!
//! Checked in every reachable state: every acknowledged message, and every message a read
//! returned, is at its seq in the log of the catalog's owner whenever that owner has finished
//! start; no two reads returned different messages at one seq; no message was acknowledged at
//! two seqs. Optionally also: from every state where all nodes run and are `Up`, one fair
//! schedule (fetch the catalog, deliver the owner's messages in order) makes the owner ready.
//!
//! The search is breadth-first, so a counterexample is a shortest one. It stores 64-bit
//! fingerprints, not states (hash compaction), and merges states that cannot behave
//! differently: epochs are renumbered densely, messages that can no longer change anything
//! are dropped, and a state whose remaining fault budget is covered by an explored twin's is
//! skipped. Bounds: [`Bounds`], each overridden by a `REPLICATION_MODEL_*` environment
//! variable (see [`Bounds::overridden_by_env`]); run with `-- --nocapture` to see state
//! counts and traces.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

/// Chat nodes in the model: A, B and C.
const NODES: usize = 3;
/// Room log slots: the most messages a run may send (seqs never exceed the messages sent).
const LOG_CAPACITY: usize = 6;
/// How many steps the recovery check may take before it calls a state stuck.
const RECOVERY_STEPS: usize = 40;

type NodeId = u8;
type Seq = u8;
/// Message ids are 1, 2, ...; 0 means "no message".
type MessageId = u8;
type Epoch = u8;

fn node_name(node: NodeId) -> char {
    ['A', 'B', 'C'].get(usize::from(node)).copied().unwrap_or('?')
}

fn all_nodes() -> impl Iterator<Item = NodeId> {
    (0..NODES).filter_map(|node| NodeId::try_from(node).ok())
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/// One of the new rules that a test can switch off to see what it protects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rule {
    /// Rules 1 and 2: the catalog tracks `in_sync` and promotes only an in-sync replica.
    PromoteOnlyInSync,
    /// Rule 3: a timed-out batch stays in the log and the owner re-runs start (no rollback).
    KeepTimedOutBatch,
    /// Rule 4: `Replicate` names the entry it follows; the replica refuses a gap or a fork.
    ReplicateNamesPrev,
    /// Rule 5: reads return only entries up to the owner's commit point; so does the seq
    /// the owner answers a retried send with (dedupe).
    ReadUpToCommit,
    /// Rule 6 strengthened (not in the original list; this checker found it necessary): an
    /// `Adopt` at epoch `e` never drops what the replica stored at `e`. The replica keeps,
    /// with its fence, the highest seq it stored at that epoch and truncates no lower. An
    /// owner never takes back what it sent at its epoch, so only an `Adopt` from an abandoned
    /// start of that epoch, arriving late, would drop such entries (and they can be acked).
    AdoptSparesItsEpoch,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rules {
    /// Today's rules.
    Old,
    /// The new rules, all of them or all but one.
    New { without: Option<Rule> },
}

impl Rules {
    const NEW: Rules = Rules::New { without: None };

    fn has(self, rule: Rule) -> bool {
        match self {
            Rules::Old => false,
            Rules::New { without } => without != Some(rule),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds and model configuration
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Bounds {
    /// Distinct messages clients send.
    messages: u8,
    /// Node crashes in a run (each may be followed by a restart).
    crashes: u8,
    /// `NodeDown` decisions in a run (each may be followed by a `NodeUp`).
    node_downs: u8,
    /// Messages the network may deliver a second time.
    duplicates: u8,
    /// Client retries of a message whose send failed.
    retries: u8,
    /// Longest run explored (breadth-first levels).
    depth: usize,
}

impl Bounds {
    /// Sized so that the new rules' exhaustive search takes well under a minute in a debug
    /// build on two slow cores.
    const DEFAULT: Bounds =
        Bounds { messages: 2, crashes: 1, node_downs: 2, duplicates: 0, retries: 0, depth: usize::MAX };

    /// A client retry instead of the crash (so that the search stays as small).
    const WITH_A_RETRY: Bounds = Bounds { crashes: 0, retries: 1, ..Bounds::DEFAULT };

    /// A duplicate delivery instead of the crash.
    const WITH_A_DUPLICATE: Bounds = Bounds { crashes: 0, duplicates: 1, ..Bounds::DEFAULT };

    /// These bounds, each replaced by its `REPLICATION_MODEL_MESSAGES` (at most
    /// [`LOG_CAPACITY`]), `_CRASHES`, `_NODE_DOWNS`, `_DUPLICATES`, `_RETRIES` or `_DEPTH`
    /// environment variable when set.
    fn overridden_by_env(self) -> Bounds {
        fn read<T: std::str::FromStr>(name: &str, default: T) -> T {
            std::env::var(format!("REPLICATION_MODEL_{name}")).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
        }
        let messages = read("MESSAGES", self.messages);
        assert!(usize::from(messages) <= LOG_CAPACITY, "at most {LOG_CAPACITY} messages");
        Bounds {
            messages,
            crashes: read("CRASHES", self.crashes),
            node_downs: read("NODE_DOWNS", self.node_downs),
            duplicates: read("DUPLICATES", self.duplicates),
            retries: read("RETRIES", self.retries),
            depth: read("DEPTH", self.depth),
        }
    }

    fn budget(&self) -> Budget {
        Budget {
            crashes: self.crashes,
            node_downs: self.node_downs,
            duplicates: self.duplicates,
            retries: self.retries,
        }
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} messages, {} crashes, {} NodeDown, {} duplicate deliveries, {} retries, depth {}",
            self.messages,
            self.crashes,
            self.node_downs,
            self.duplicates,
            self.retries,
            if self.depth == usize::MAX { "unbounded".to_string() } else { self.depth.to_string() }
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Model {
    rules: Rules,
    bounds: Bounds,
    /// Whether clients read (a search for lost acknowledgements runs faster without).
    reads: bool,
    /// Whether to check that every all-up state can still make an owner ready.
    check_recovery: bool,
    /// Whether `NodeDown` is decided only for crashed nodes (else for any `Up` node).
    accurate_failure_detector: bool,
}

impl Model {
    fn new(rules: Rules, bounds: Bounds) -> Model {
        Model {
            rules,
            bounds: bounds.overridden_by_env(),
            reads: true,
            check_recovery: false,
            accurate_failure_detector: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// A room log: `seq -> message id`, with 0 for "no entry" (old rules can leave holes).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Log([MessageId; LOG_CAPACITY]);

impl Hash for Log {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(pack(&self.0));
    }
}

/// The slots as one word (hashing them one by one is slow in a debug build).
fn pack(slots: &[u8; LOG_CAPACITY]) -> u64 {
    const { assert!(LOG_CAPACITY <= 8) };
    let mut word = 0;
    for slot in slots {
        word = word << 8 | u64::from(*slot);
    }
    word
}

impl Log {
    fn at(&self, seq: Seq) -> MessageId {
        usize::from(seq).checked_sub(1).and_then(|index| self.0.get(index)).copied().unwrap_or(0)
    }

    fn put(&mut self, seq: Seq, id: MessageId) {
        if let Some(slot) = usize::from(seq).checked_sub(1).and_then(|index| self.0.get_mut(index)) {
            *slot = id;
        }
    }

    fn entries(&self) -> impl Iterator<Item = (Seq, MessageId)> + '_ {
        (1..=LOG_CAPACITY).filter_map(|seq| Seq::try_from(seq).ok()).map(|seq| (seq, self.at(seq))).filter(|e| e.1 != 0)
    }

    fn last(&self) -> Seq {
        self.0.iter().rposition(|id| *id != 0).and_then(|index| Seq::try_from(index + 1).ok()).unwrap_or(0)
    }

    fn truncate_after(&mut self, base: Seq) {
        for (index, slot) in self.0.iter_mut().enumerate() {
            if index >= usize::from(base) {
                *slot = 0;
            }
        }
    }

    fn seq_of(&self, id: MessageId) -> Option<Seq> {
        self.entries().find(|&(_, held)| held == id).map(|(seq, _)| seq)
    }

    fn next_after(&self, seq: Seq) -> Option<(Seq, MessageId)> {
        self.entries().find(|&(held, _)| held > seq)
    }

    /// The entry `seq` follows in this log (the highest below it), or `(0, 0)`: what a
    /// `Replicate` names under rule 4 (under other rules it names nothing, `(0, 0)`).
    fn prev_for(&self, rules: Rules, seq: Seq) -> (Seq, MessageId) {
        if !rules.has(Rule::ReplicateNamesPrev) {
            return (0, 0);
        }
        self.entries().take_while(|&(held, _)| held < seq).last().unwrap_or((0, 0))
    }
}

impl fmt::Display for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.last();
        let slots: Vec<String> = (1..=last)
            .map(|seq| if self.at(seq) == 0 { "_".to_string() } else { format!("m{}", self.at(seq)) })
            .collect();
        write!(f, "[{}]", slots.join(" "))
    }
}

/// The position of `epoch` among the epochs set in `used` (see [`State::epochs_in_use`]).
fn rank_among(used: u64, epoch: Epoch) -> Epoch {
    Epoch::try_from((used & ((1_u64 << epoch) - 1)).count_ones()).unwrap_or(Epoch::MAX)
}

/// Where the catalog places the room.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Placement {
    owner: NodeId,
    replica: Option<NodeId>,
    epoch: Epoch,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let replica = self.replica.map_or('-', node_name);
        write!(f, "owner {} replica {} epoch {}", node_name(self.owner), replica, self.epoch)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Catalog {
    up: [bool; NODES],
    room: Placement,
    /// New rules only: whether the replica holds the owner's log (set by `ReplicaInSync`).
    replica_in_sync: bool,
}

/// Where an owner task is in taking the room over and taking sends.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Phase {
    /// Start was refused: a newer epoch holds the room on this node's disk. (Start runs as
    /// soon as a task is spawned and again right after a timeout: running it later reaches
    /// no other states, since whatever could happen in between could as well happen before.)
    Fenced,
    /// Waiting for `Adopted`; `target` is the own log's last seq when start began.
    Adopting { target: Seq },
    /// Waiting for `Stored` of the entry after `replica_last`.
    Copying { replica_last: Seq, target: Seq },
    /// Start completed: takes sends.
    Ready,
    /// Waiting for `Stored` of the one-message batch `(seq, id)`.
    Sending { seq: Seq, id: MessageId },
}

impl Phase {
    fn is_ready(self) -> bool {
        matches!(self, Phase::Ready | Phase::Sending { .. })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Phase::Fenced => write!(f, "fenced out"),
            Phase::Adopting { target } => write!(f, "adopting (own log ends at {target})"),
            Phase::Copying { replica_last, target } => write!(f, "copying (replica has {replica_last} of {target})"),
            Phase::Ready => write!(f, "ready"),
            Phase::Sending { seq, id } => write!(f, "sending m{id} as seq {seq}"),
        }
    }
}

/// An owner task (memory only), for the placement it was started for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct OwnerTask {
    epoch: Epoch,
    replica: Option<NodeId>,
    phase: Phase,
    /// Highest seq known to be on the replica (0: not known yet).
    commit: Seq,
}

impl OwnerTask {
    fn spawned(room: Placement) -> OwnerTask {
        OwnerTask { epoch: room.epoch, replica: room.replica, phase: Phase::Fenced, commit: 0 }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct ChatNode {
    running: bool,
    /// Disk.
    log: Log,
    /// Disk: the highest epoch this node accepted for the room.
    fence: Epoch,
    /// Disk, with the fence ([`Rule::AdoptSparesItsEpoch`]): the highest seq this node
    /// stored as a replica at epoch `fence`.
    stored_at_fence: Seq,
    /// Memory: present when the catalog placement this node last fetched makes it the
    /// owner. (What else a node's view says does not change what it does.)
    owner: Option<OwnerTask>,
}

impl ChatNode {
    /// Accepts `epoch` for the room (the caller checked it is not older than the fence).
    fn raise_fence(&mut self, epoch: Epoch) {
        if epoch > self.fence {
            self.fence = epoch;
            self.stored_at_fence = 0;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Address {
    Node(NodeId),
    Catalog,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Body {
    Adopt { epoch: Epoch, base: Seq },
    Replicate { epoch: Epoch, seq: Seq, id: MessageId, prev: (Seq, MessageId) },
    Adopted { epoch: Epoch, last: Seq, tail: Log },
    Stored { epoch: Epoch, seq: Seq },
    ReplicaInSync { epoch: Epoch },
}

impl Body {
    fn epoch(self) -> Epoch {
        match self {
            Body::Adopt { epoch, .. }
            | Body::Replicate { epoch, .. }
            | Body::Adopted { epoch, .. }
            | Body::Stored { epoch, .. }
            | Body::ReplicaInSync { epoch } => epoch,
        }
    }

    fn with_epoch(self, epoch: Epoch) -> Body {
        match self {
            Body::Adopt { base, .. } => Body::Adopt { epoch, base },
            Body::Replicate { seq, id, prev, .. } => Body::Replicate { epoch, seq, id, prev },
            Body::Adopted { last, tail, .. } => Body::Adopted { epoch, last, tail },
            Body::Stored { seq, .. } => Body::Stored { epoch, seq },
            Body::ReplicaInSync { .. } => Body::ReplicaInSync { epoch },
        }
    }

    fn is_request(self) -> bool {
        matches!(self, Body::Adopt { .. } | Body::Replicate { .. })
    }

    fn is_response(self) -> bool {
        matches!(self, Body::Adopted { .. } | Body::Stored { .. })
    }
}

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Body::Adopt { epoch, base } => write!(f, "Adopt{{epoch {epoch}, base {base}}}"),
            Body::Replicate { epoch, seq, id, prev: (0, _) } => {
                write!(f, "Replicate{{epoch {epoch}, seq {seq}: m{id}}}")
            }
            Body::Replicate { epoch, seq, id, prev: (prev_seq, prev_id) } => {
                write!(f, "Replicate{{epoch {epoch}, seq {seq}: m{id}, after {prev_seq}: m{prev_id}}}")
            }
            Body::Adopted { epoch, last, tail } => write!(f, "Adopted{{epoch {epoch}, last {last}, tail {tail}}}"),
            Body::Stored { epoch, seq } => write!(f, "Stored{{epoch {epoch}, seq {seq}}}"),
            Body::ReplicaInSync { epoch } => write!(f, "ReplicaInSync{{epoch {epoch}}}"),
        }
    }
}

/// A message in flight. `current` is false once the exchange it belongs to is over (the
/// owner timed out, moved on, or lost its task): such a response is discarded on arrival,
/// so it is removed at once; such a request may still arrive and change the receiver.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Envelope {
    to: Address,
    from: NodeId,
    current: bool,
    body: Body,
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = match self.to {
            Address::Node(node) => node_name(node).to_string(),
            Address::Catalog => "catalog".to_string(),
        };
        let stale = if self.current || !self.body.is_request() { "" } else { " (abandoned)" };
        write!(f, "{} {} -> {}{}", self.body, node_name(self.from), to, stale)
    }
}

/// What is left of the run's bounded events.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Budget {
    crashes: u8,
    node_downs: u8,
    duplicates: u8,
    retries: u8,
}

impl Budget {
    /// Whether a state with this budget can do all that one with `other` can.
    fn covers(self, other: Budget) -> bool {
        self.crashes >= other.crashes
            && self.node_downs >= other.node_downs
            && self.duplicates >= other.duplicates
            && self.retries >= other.retries
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Violation {
    /// An acknowledged message is not at its seq in the log of the ready owner.
    AcknowledgedMessageLost { seq: Seq, id: MessageId, owner: NodeId, holds: MessageId },
    /// A message a read returned is not at its seq in the log of the ready owner.
    ReadMessageLost { seq: Seq, id: MessageId, owner: NodeId, holds: MessageId },
    /// Two reads returned different messages at one seq.
    ReadsDisagree { seq: Seq, first: MessageId, second: MessageId },
    /// One message acknowledged at two seqs.
    AcknowledgedTwice { id: MessageId, first: Seq, second: Seq },
    /// All nodes run and are `Up`, yet the owner cannot become ready.
    OwnerCannotBecomeReady,
}

/// The property a violation breaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Property {
    Durability,
    ReadAgreement,
    NoDuplicate,
    Recovery,
}

impl Violation {
    fn property(self) -> Property {
        match self {
            Violation::AcknowledgedMessageLost { .. } => Property::Durability,
            Violation::ReadMessageLost { .. } | Violation::ReadsDisagree { .. } => Property::ReadAgreement,
            Violation::AcknowledgedTwice { .. } => Property::NoDuplicate,
            Violation::OwnerCannotBecomeReady => Property::Recovery,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let holding = |holds: MessageId| if holds == 0 { "nothing".to_string() } else { format!("m{holds}") };
        match *self {
            Violation::AcknowledgedMessageLost { seq, id, owner, holds } => write!(
                f,
                "acknowledged m{id} at seq {seq}, but ready owner {} holds {} there",
                node_name(owner),
                holding(holds)
            ),
            Violation::ReadMessageLost { seq, id, owner, holds } => write!(
                f,
                "a read returned m{id} at seq {seq}, but ready owner {} holds {} there",
                node_name(owner),
                holding(holds)
            ),
            Violation::ReadsDisagree { seq, first, second } => {
                write!(f, "reads returned m{first} and then m{second} at seq {seq}")
            }
            Violation::AcknowledgedTwice { id, first, second } => {
                write!(f, "m{id} acknowledged at seq {first} and at seq {second}")
            }
            Violation::OwnerCannotBecomeReady => write!(f, "all nodes are up, yet no schedule makes the owner ready"),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    catalog: Catalog,
    nodes: [ChatNode; NODES],
    /// Messages in flight: sorted, each distinct message once (a second delivery of one
    /// costs a `duplicates` budget unit).
    network: Vec<Envelope>,
    /// `acked[id - 1]`: the seq message `id` was acknowledged at (0: not acknowledged).
    acked: [Seq; LOG_CAPACITY],
    /// What reads returned at each seq (the first answer).
    reads: Log,
    /// Messages `1..=sent` have been sent at least once.
    sent: u8,
    left: Budget,
    /// A violation seen on a transition (a read or an acknowledgement that disagreed).
    anomaly: Option<Violation>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    /// A client sends message `id` (first time, or a retry) to this node's owner task.
    Send {
        node: NodeId,
        id: MessageId,
    },
    /// The owner gives up waiting.
    Timeout(NodeId),
    /// A client reads the room from this node.
    Read(NodeId),
    /// The node fetches the catalog.
    Refresh(NodeId),
    Crash(NodeId),
    Restart(NodeId),
    /// The failure detector's decision, right or wrong.
    NodeDown(NodeId),
    NodeUp(NodeId),
    Deliver {
        envelope: Envelope,
        duplicate: bool,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Action::Send { node, id } => write!(f, "a client sends m{id} to {}", node_name(node)),
            Action::Timeout(node) => write!(f, "{} times out", node_name(node)),
            Action::Read(node) => write!(f, "a client reads from {}", node_name(node)),
            Action::Refresh(node) => write!(f, "{} fetches the catalog", node_name(node)),
            Action::Crash(node) => write!(f, "{} crashes", node_name(node)),
            Action::Restart(node) => write!(f, "{} restarts", node_name(node)),
            Action::NodeDown(node) => write!(f, "catalog: NodeDown({})", node_name(node)),
            Action::NodeUp(node) => write!(f, "catalog: NodeUp({})", node_name(node)),
            Action::Deliver { envelope, duplicate } => {
                write!(f, "deliver {envelope}{}", if duplicate { " (a duplicate; it stays in flight)" } else { "" })
            }
        }
    }
}

impl State {
    /// The room was just created: A owns it at epoch 1 with B as replica, both logs empty
    /// (so the replica is trivially in sync); every node has fetched that placement and
    /// A's owner task has run start (its `Adopt` is in flight).
    fn initial(model: &Model) -> State {
        let room = Placement { owner: 0, replica: Some(1), epoch: 1 };
        let idle = ChatNode { running: true, log: Log::default(), fence: 0, stored_at_fence: 0, owner: None };
        let mut nodes = [idle; NODES];
        nodes[0].owner = Some(OwnerTask::spawned(room));
        let mut state = State {
            catalog: Catalog { up: [true; NODES], room, replica_in_sync: true },
            nodes,
            network: Vec::new(),
            acked: [0; LOG_CAPACITY],
            reads: Log::default(),
            sent: 0,
            left: model.bounds.budget(),
            anomaly: None,
        };
        state.start(model, 0);
        state.drop_dead_messages(model);
        state
    }

    fn node(&self, node: NodeId) -> &ChatNode {
        &self.nodes[usize::from(node)]
    }

    fn node_mut(&mut self, node: NodeId) -> &mut ChatNode {
        &mut self.nodes[usize::from(node)]
    }

    fn task_mut(&mut self, node: NodeId) -> Option<&mut OwnerTask> {
        self.node_mut(node).owner.as_mut()
    }

    /// The actions that may be enabled (cheap checks; [`Self::after`] decides).
    fn candidate_actions(&self, model: &Model) -> Vec<Action> {
        let mut actions = Vec::with_capacity(16 + 2 * self.network.len());
        for node in all_nodes() {
            let chat_node = self.node(node);
            let up = self.catalog.up[usize::from(node)];
            if !chat_node.running {
                actions.push(Action::Restart(node));
            } else {
                if self.left.crashes > 0 {
                    actions.push(Action::Crash(node));
                }
                let owns = self.catalog.room.owner == node;
                match chat_node.owner {
                    Some(task) if !owns || task.epoch != self.catalog.room.epoch => actions.push(Action::Refresh(node)),
                    None if owns => actions.push(Action::Refresh(node)),
                    _ => {}
                }
                if let Some(task) = chat_node.owner {
                    if model.reads {
                        actions.push(Action::Read(node));
                    }
                    match task.phase {
                        Phase::Ready => {
                            let highest = self.sent.saturating_add(1).min(model.bounds.messages);
                            actions.extend((1..=highest).map(|id| Action::Send { node, id }));
                        }
                        Phase::Fenced => {}
                        Phase::Adopting { .. } | Phase::Copying { .. } | Phase::Sending { .. } => {
                            actions.push(Action::Timeout(node))
                        }
                    }
                }
                if !up {
                    actions.push(Action::NodeUp(node));
                }
            }
            if up && self.left.node_downs > 0 && !(model.accurate_failure_detector && chat_node.running) {
                actions.push(Action::NodeDown(node));
            }
        }
        for &envelope in &self.network {
            actions.push(Action::Deliver { envelope, duplicate: false });
            if self.left.duplicates > 0 {
                actions.push(Action::Deliver { envelope, duplicate: true });
            }
        }
        actions
    }

    /// The state after `action`, or `None` when it is not enabled.
    fn after(&self, model: &Model, action: Action) -> Option<State> {
        let mut next = self.after_keeping_epochs(model, action)?;
        next.renumber_epochs();
        Some(next)
    }

    /// [`Self::after`] without renumbering epochs (to print a trace with the real ones).
    fn after_keeping_epochs(&self, model: &Model, action: Action) -> Option<State> {
        let mut next = self.clone();
        let enabled = match action {
            Action::Send { node, id } => next.client_send(model, node, id),
            Action::Timeout(node) => next.timeout(model, node),
            Action::Read(node) => next.read(model, node),
            Action::Refresh(node) => next.refresh(model, node),
            Action::Crash(node) => next.crash(node),
            Action::Restart(node) => next.restart(model, node),
            Action::NodeDown(node) => next.node_down(model, node),
            Action::NodeUp(node) => next.node_up(node),
            Action::Deliver { envelope, duplicate } => next.deliver(model, envelope, duplicate),
        };
        if !enabled {
            return None;
        }
        next.drop_dead_messages(model);
        Some(next)
    }

    // --- network -------------------------------------------------------------------------------

    /// Sends from `from`; a message to a stopped node is lost (the connection fails).
    fn send(&mut self, from: NodeId, to: Address, current: bool, body: Body) {
        if let Address::Node(node) = to {
            if !self.node(node).running {
                return;
            }
        }
        self.network.push(Envelope { to, from, current, body });
    }

    /// Ends the exchange `owner`'s task is in: its outstanding requests and their answers
    /// no longer belong to a waiting exchange.
    fn retire_exchange(&mut self, owner: NodeId) {
        for envelope in &mut self.network {
            let ours = (envelope.from == owner && envelope.body.is_request())
                || (envelope.to == Address::Node(owner) && envelope.body.is_response());
            if ours {
                envelope.current = false;
            }
        }
    }

    /// Drops messages that can no longer change anything and sorts the rest, so equal states
    /// compare equal. Dead for good: an answer nobody waits for; a request the receiver's
    /// fence refuses (fences only rise); a `ReplicaInSync` for another epoch than the
    /// catalog's or while the replica is in sync already (only a new epoch clears it); and,
    /// under [`Rule::AdoptSparesItsEpoch`], an abandoned `Adopt` of the receiver's epoch that
    /// would truncate nothing (at that epoch only entries it spares can be added).
    fn drop_dead_messages(&mut self, model: &Model) {
        let nodes = self.nodes;
        let catalog = self.catalog;
        let spares_its_epoch = model.rules.has(Rule::AdoptSparesItsEpoch);
        self.network.retain(|envelope| match (envelope.to, envelope.body) {
            (_, body) if body.is_response() => envelope.current,
            (Address::Node(node), Body::Adopt { epoch, base }) if !envelope.current && spares_its_epoch => {
                let receiver = nodes[usize::from(node)];
                epoch > receiver.fence
                    || (epoch == receiver.fence && receiver.log.last() > base.max(receiver.stored_at_fence))
            }
            (Address::Node(node), body) => body.epoch() >= nodes[usize::from(node)].fence,
            (Address::Catalog, body) => body.epoch() == catalog.room.epoch && !catalog.replica_in_sync,
        });
        self.network.sort_unstable();
        self.network.dedup();
    }

    /// Renumbers epochs densely (1, 2, ... in order). Epochs are only compared and the
    /// catalog's next one is above all others, so this changes no behaviour; it merges
    /// states that differ only in epochs nobody ever used.
    fn renumber_epochs(&mut self) {
        let used = self.epochs_in_use();
        if used & (used + 1) == 0 {
            return; // already 0, 1, 2, ... without gaps
        }
        let rank = |epoch: Epoch| rank_among(used, epoch);
        self.catalog.room.epoch = rank(self.catalog.room.epoch);
        for node in &mut self.nodes {
            node.fence = rank(node.fence);
            if let Some(task) = node.owner.as_mut() {
                task.epoch = rank(task.epoch);
            }
        }
        for envelope in &mut self.network {
            envelope.body = envelope.body.with_epoch(rank(envelope.body.epoch()));
        }
        self.network.sort_unstable();
    }

    /// Bit `e` set: epoch `e` occurs in the state (0, no fence yet, always counts). Epochs
    /// stay small: they are renumbered at each step.
    fn epochs_in_use(&self) -> u64 {
        let mut used: u64 = 1 | 1 << self.catalog.room.epoch;
        for node in &self.nodes {
            used |= 1 << node.fence;
            if let Some(task) = node.owner {
                used |= 1 << task.epoch;
            }
        }
        for envelope in &self.network {
            used |= 1 << envelope.body.epoch();
        }
        used
    }

    // --- owner ---------------------------------------------------------------------------------

    /// Start: raise the own fence (or stay `Fenced`), then `Adopt` (or, without a replica,
    /// ready at once).
    fn start(&mut self, model: &Model, node: NodeId) {
        let chat_node = self.node_mut(node);
        let Some(task) = chat_node.owner.as_mut() else { return };
        task.phase = Phase::Fenced;
        let task = *task;
        if chat_node.fence > task.epoch {
            return;
        }
        let base = chat_node.log.last();
        chat_node.raise_fence(task.epoch);
        match task.replica {
            None => self.complete_start(model, node, base),
            Some(replica) => {
                self.retire_exchange(node);
                self.send(node, Address::Node(replica), true, Body::Adopt { epoch: task.epoch, base });
                if let Some(task) = self.task_mut(node) {
                    task.phase = Phase::Adopting { target: base };
                }
            }
        }
    }

    fn complete_start(&mut self, model: &Model, node: NodeId, target: Seq) {
        let Some(task) = self.task_mut(node) else { return };
        let replica = task.replica;
        task.phase = Phase::Ready;
        task.commit = target;
        let epoch = task.epoch;
        if replica.is_some() && model.rules.has(Rule::PromoteOnlyInSync) {
            self.send(node, Address::Catalog, true, Body::ReplicaInSync { epoch });
        }
    }

    /// Copies the entry after `replica_last` to the replica, or completes start.
    fn copy_next(&mut self, model: &Model, node: NodeId, replica_last: Seq, target: Seq) {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return };
        let next = if replica_last < target { chat_node.log.next_after(replica_last) } else { None };
        match (next, task.replica) {
            (Some((seq, id)), Some(replica)) => {
                let prev = chat_node.log.prev_for(model.rules, seq);
                self.retire_exchange(node);
                self.send(node, Address::Node(replica), true, Body::Replicate { epoch: task.epoch, seq, id, prev });
                if let Some(task) = self.task_mut(node) {
                    task.phase = Phase::Copying { replica_last, target };
                }
            }
            _ => self.complete_start(model, node, target),
        }
    }

    fn client_send(&mut self, model: &Model, node: NodeId, id: MessageId) -> bool {
        let first_send = id == self.sent + 1;
        if first_send {
            self.sent = id;
        } else {
            // The client gave up on an earlier attempt (which may still be under way).
            let acked = self.acked[usize::from(id) - 1] != 0;
            if self.left.retries == 0 || acked {
                return false;
            }
            self.left.retries -= 1;
        }
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return false };
        // min_copies = 2: without a replica the owner takes no sends.
        let Some(replica) = task.replica else { return false };
        if !chat_node.running || task.phase != Phase::Ready {
            return false;
        }
        if let Some(seq) = chat_node.log.seq_of(id) {
            // A retry of a message the owner's log holds: answered with its seq (under rule 5
            // only up to the commit point: the answer tells the client where it is).
            if model.rules.has(Rule::ReadUpToCommit) && seq > task.commit {
                return false;
            }
            self.acknowledge(seq, id);
            return true;
        }
        let seq = chat_node.log.last() + 1;
        if chat_node.fence > task.epoch || seq == 0 || usize::from(seq) > LOG_CAPACITY {
            return false;
        }
        let chat_node = self.node_mut(node);
        chat_node.raise_fence(task.epoch);
        chat_node.log.put(seq, id);
        let prev = chat_node.log.prev_for(model.rules, seq);
        if let Some(task) = chat_node.owner.as_mut() {
            task.phase = Phase::Sending { seq, id };
        }
        self.retire_exchange(node);
        self.send(node, Address::Node(replica), true, Body::Replicate { epoch: task.epoch, seq, id, prev });
        true
    }

    fn acknowledge(&mut self, seq: Seq, id: MessageId) {
        let slot = &mut self.acked[usize::from(id) - 1];
        if *slot == 0 {
            *slot = seq;
        } else if *slot != seq {
            let first = *slot;
            self.anomaly.get_or_insert(Violation::AcknowledgedTwice { id, first, second: seq });
        }
    }

    /// The owner stops waiting: a failed start runs again; a batch is kept and start runs
    /// again (new rules) or the batch is rolled back (old rules).
    fn timeout(&mut self, model: &Model, node: NodeId) -> bool {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return false };
        let fence = chat_node.fence;
        self.retire_exchange(node);
        match task.phase {
            Phase::Fenced | Phase::Ready => return false,
            Phase::Sending { seq, .. } if !model.rules.has(Rule::KeepTimedOutBatch) => {
                // Roll the batch back to reuse its seq (unless a newer epoch holds the room
                // on this node).
                if fence <= task.epoch {
                    self.node_mut(node).log.truncate_after(seq - 1);
                }
                if let Some(task) = self.task_mut(node) {
                    task.phase = Phase::Ready;
                }
            }
            Phase::Adopting { .. } | Phase::Copying { .. } | Phase::Sending { .. } => self.start(model, node),
        }
        true
    }

    fn read(&mut self, model: &Model, node: NodeId) -> bool {
        let chat_node = self.node(node);
        // Reads go to whichever node believes it owns the room.
        if !chat_node.running || chat_node.owner.is_none() {
            return false;
        }
        let limit = if model.rules.has(Rule::ReadUpToCommit) {
            chat_node.owner.map_or(0, |task| task.commit)
        } else {
            Seq::MAX
        };
        let returned: Vec<(Seq, MessageId)> = chat_node.log.entries().filter(|&(seq, _)| seq <= limit).collect();
        let mut changed = false;
        for (seq, id) in returned {
            match self.reads.at(seq) {
                0 => {
                    self.reads.put(seq, id);
                    changed = true;
                }
                first if first != id && self.anomaly.is_none() => {
                    self.anomaly = Some(Violation::ReadsDisagree { seq, first, second: id });
                    changed = true;
                }
                _ => {}
            }
        }
        changed
    }

    // --- nodes ---------------------------------------------------------------------------------

    /// Installs the catalog's placement as the node's view, starting or stopping its owner
    /// task as `apply_routes` does. Whether anything changed.
    fn install_view(&mut self, model: &Model, node: NodeId) -> bool {
        let room = self.catalog.room;
        let chat_node = self.node_mut(node);
        let keep = chat_node.owner.is_some_and(|task| room.owner == node && room.epoch == task.epoch);
        if keep || (chat_node.owner.is_none() && room.owner != node) {
            return false;
        }
        if chat_node.owner.is_some() {
            chat_node.owner = None;
            self.retire_exchange(node);
        }
        if room.owner == node {
            self.node_mut(node).owner = Some(OwnerTask::spawned(room));
            self.start(model, node);
        }
        true
    }

    fn refresh(&mut self, model: &Model, node: NodeId) -> bool {
        self.node(node).running && self.install_view(model, node)
    }

    fn crash(&mut self, node: NodeId) -> bool {
        if !self.node(node).running || self.left.crashes == 0 {
            return false;
        }
        self.left.crashes -= 1;
        let chat_node = self.node_mut(node);
        chat_node.running = false;
        chat_node.owner = None;
        self.network.retain(|envelope| envelope.to != Address::Node(node));
        self.retire_exchange(node);
        true
    }

    fn restart(&mut self, model: &Model, node: NodeId) -> bool {
        if self.node(node).running {
            return false;
        }
        self.node_mut(node).running = true;
        self.install_view(model, node);
        true
    }

    // --- catalog -------------------------------------------------------------------------------

    /// The lowest `Up` node not in `exclude` (with one room, least-loaded ties on id).
    fn least_loaded(&self, exclude: &[NodeId]) -> Option<NodeId> {
        all_nodes().find(|node| self.catalog.up[usize::from(*node)] && !exclude.contains(node))
    }

    fn reassign(&mut self, owner: NodeId, replica: Option<NodeId>) {
        let room = &mut self.catalog.room;
        if room.owner == owner && room.replica == replica {
            return;
        }
        if room.replica != replica {
            self.catalog.replica_in_sync = false;
        }
        *room = Placement { owner, replica, epoch: room.epoch + 1 };
    }

    fn node_down(&mut self, model: &Model, node: NodeId) -> bool {
        let wrong = model.accurate_failure_detector && self.node(node).running;
        if !self.catalog.up[usize::from(node)] || self.left.node_downs == 0 || wrong {
            return false;
        }
        self.left.node_downs -= 1;
        self.catalog.up[usize::from(node)] = false;
        let room = self.catalog.room;
        if room.owner == node {
            let promotable = |replica: &NodeId| {
                self.catalog.up[usize::from(*replica)]
                    && (self.catalog.replica_in_sync || !model.rules.has(Rule::PromoteOnlyInSync))
            };
            if let Some(new_owner) = room.replica.filter(promotable) {
                let replica = self.least_loaded(&[new_owner]);
                self.reassign(new_owner, replica);
            }
        } else if room.replica == Some(node) {
            let replica = self.least_loaded(&[room.owner]);
            self.reassign(room.owner, replica);
        }
        true
    }

    fn node_up(&mut self, node: NodeId) -> bool {
        if self.catalog.up[usize::from(node)] || !self.node(node).running {
            return false;
        }
        self.catalog.up[usize::from(node)] = true;
        let room = self.catalog.room;
        if room.replica.is_none() {
            let replica = if room.owner == node { self.least_loaded(&[node]) } else { Some(node) };
            self.reassign(room.owner, replica);
        }
        true
    }

    // --- delivery ------------------------------------------------------------------------------

    fn deliver(&mut self, model: &Model, envelope: Envelope, duplicate: bool) -> bool {
        let Ok(index) = self.network.binary_search(&envelope) else { return false };
        if duplicate {
            if self.left.duplicates == 0 {
                return false;
            }
            self.left.duplicates -= 1;
        } else {
            self.network.remove(index);
        }
        match (envelope.to, envelope.body) {
            (Address::Catalog, Body::ReplicaInSync { epoch }) => {
                if epoch == self.catalog.room.epoch {
                    self.catalog.replica_in_sync = true;
                }
            }
            (Address::Node(node), Body::Adopt { epoch, base }) => self.adopt(model, node, envelope, epoch, base),
            (Address::Node(node), Body::Replicate { epoch, seq, id, prev }) => {
                self.store_replica(model, node, envelope, (epoch, seq, id, prev))
            }
            (Address::Node(node), Body::Adopted { last, tail, .. }) => self.adopted(model, node, last, tail),
            (Address::Node(node), Body::Stored { seq, .. }) => self.stored(model, node, seq),
            (Address::Catalog, _) | (Address::Node(_), Body::ReplicaInSync { .. }) => {}
        }
        true
    }

    /// Replica side of `Adopt`: fence, drop what lies past `base`, show the tail.
    fn adopt(&mut self, model: &Model, node: NodeId, request: Envelope, epoch: Epoch, base: Seq) {
        let chat_node = self.node_mut(node);
        if epoch < chat_node.fence {
            return;
        }
        chat_node.raise_fence(epoch);
        let keep = if model.rules.has(Rule::AdoptSparesItsEpoch) { chat_node.stored_at_fence } else { 0 };
        chat_node.log.truncate_after(base.max(keep));
        let (last, tail) = (chat_node.log.last(), chat_node.log);
        self.send(node, Address::Node(request.from), request.current, Body::Adopted { epoch, last, tail });
    }

    /// Replica side of `Replicate`.
    fn store_replica(
        &mut self,
        model: &Model,
        node: NodeId,
        request: Envelope,
        (epoch, seq, id, prev): (Epoch, Seq, MessageId, (Seq, MessageId)),
    ) {
        let names_prev = model.rules.has(Rule::ReplicateNamesPrev);
        let chat_node = self.node_mut(node);
        if epoch < chat_node.fence {
            return;
        }
        if names_prev && prev.0 > 0 && chat_node.log.at(prev.0) != prev.1 {
            return; // refused: storing it would leave a gap or fork the log
        }
        chat_node.raise_fence(epoch);
        if names_prev && chat_node.log.at(seq) != id {
            // What follows a different entry is a foreign tail: drop it with the entry.
            chat_node.log.put(seq, id);
            chat_node.log.truncate_after(seq);
            chat_node.stored_at_fence = seq;
        } else {
            chat_node.log.put(seq, id);
            chat_node.stored_at_fence = chat_node.stored_at_fence.max(seq);
        }
        if !model.rules.has(Rule::AdoptSparesItsEpoch) {
            chat_node.stored_at_fence = 0; // not kept under these rules
        }
        self.send(node, Address::Node(request.from), request.current, Body::Stored { epoch, seq });
    }

    /// Owner side of `Adopted`: adopt again below the first differing stamp, else copy.
    fn adopted(&mut self, model: &Model, node: NodeId, last: Seq, tail: Log) {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return };
        let Phase::Adopting { target } = task.phase else { return };
        let differs = tail.entries().find(|&(seq, id)| chat_node.log.at(seq) != id).map(|(seq, _)| seq);
        let replica = task.replica;
        self.retire_exchange(node);
        match (differs, replica) {
            (Some(seq), Some(replica)) => {
                let base = seq - 1;
                self.send(node, Address::Node(replica), true, Body::Adopt { epoch: task.epoch, base });
            }
            _ => self.copy_next(model, node, last, target),
        }
    }

    /// Owner side of `Stored`: the next copy, or the acknowledgement of the batch.
    fn stored(&mut self, model: &Model, node: NodeId, seq: Seq) {
        let Some(task) = self.node(node).owner else { return };
        self.retire_exchange(node);
        match task.phase {
            Phase::Copying { target, .. } => self.copy_next(model, node, seq, target),
            Phase::Sending { seq: pending, id } if pending == seq => {
                self.acknowledge(seq, id);
                if let Some(task) = self.task_mut(node) {
                    task.commit = task.commit.max(seq);
                    task.phase = Phase::Ready;
                }
            }
            _ => {}
        }
    }

    // --- properties ----------------------------------------------------------------------------

    fn violations(&self) -> Vec<Violation> {
        let mut found: Vec<Violation> = self.anomaly.into_iter().collect();
        let room = self.catalog.room;
        let owner = self.node(room.owner);
        let ready = owner.running && owner.owner.is_some_and(|task| task.epoch == room.epoch && task.phase.is_ready());
        if !ready {
            return found;
        }
        for (index, &seq) in self.acked.iter().enumerate() {
            let Ok(id) = MessageId::try_from(index + 1) else { continue };
            if seq != 0 && owner.log.at(seq) != id {
                let holds = owner.log.at(seq);
                found.push(Violation::AcknowledgedMessageLost { seq, id, owner: room.owner, holds });
            }
        }
        for (seq, id) in self.reads.entries() {
            if owner.log.at(seq) != id {
                let holds = owner.log.at(seq);
                found.push(Violation::ReadMessageLost { seq, id, owner: room.owner, holds });
            }
        }
        found
    }

    fn all_up(&self) -> bool {
        self.nodes.iter().all(|node| node.running) && self.catalog.up.iter().all(|up| *up)
    }

    /// Whether one fair schedule (everyone fetches the catalog, the owner's messages are
    /// delivered in order, a lost one ends in a timeout) makes the owner ready. `recovering`
    /// holds states already known to get there.
    fn can_recover(&self, model: &Model, recovering: &mut Fingerprints) -> bool {
        let mut state = self.clone();
        let mut path = Vec::new();
        for _ in 0..RECOVERY_STEPS {
            let print = fingerprint(&state);
            if recovering.contains(&print) {
                recovering.extend(path);
                return true;
            }
            path.push(print);
            for node in all_nodes() {
                if let Some(next) = state.after(model, Action::Refresh(node)) {
                    state = next;
                }
            }
            let owner = state.catalog.room.owner;
            let Some(task) = state.node(owner).owner else { return false };
            let action = match task.phase {
                phase if phase.is_ready() => {
                    recovering.extend(path);
                    return true;
                }
                Phase::Fenced => return false,
                _ => state
                    .network
                    .iter()
                    .find(|e| {
                        e.current && e.to != Address::Catalog && (e.from == owner || e.to == Address::Node(owner))
                    })
                    .map_or(Action::Timeout(owner), |&envelope| Action::Deliver { envelope, duplicate: false }),
            };
            match state.after(model, action) {
                Some(next) => state = next,
                None => return false,
            }
        }
        false
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let catalog = &self.catalog;
        let down: String = all_nodes().filter(|n| !catalog.up[usize::from(*n)]).map(node_name).collect();
        write!(f, "catalog{{{}", catalog.room)?;
        if !down.is_empty() {
            write!(f, ", down {down}")?;
        }
        write!(f, ", {}}}", if catalog.replica_in_sync { "in sync" } else { "not in sync" })?;
        for node in all_nodes() {
            let chat_node = self.node(node);
            write!(f, " {}{{", node_name(node))?;
            if !chat_node.running {
                write!(f, "crashed ")?;
            }
            write!(f, "log {} fence {}", chat_node.log, chat_node.fence)?;
            if let Some(task) = chat_node.owner {
                write!(f, " owner@{} {}", task.epoch, task.phase)?;
                if task.commit > 0 {
                    write!(f, ", commit {}", task.commit)?;
                }
            }
            write!(f, "}}")?;
        }
        let acked: Vec<String> = self
            .acked
            .iter()
            .enumerate()
            .filter(|(_, seq)| **seq != 0)
            .map(|(index, seq)| format!("m{}@{}", index + 1, seq))
            .collect();
        write!(f, " acked{{{}}}", acked.join(" "))?;
        if self.reads.last() > 0 {
            write!(f, " read{}", self.reads)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Breadth-first search
// ---------------------------------------------------------------------------------------------

fn fingerprint(state: &State) -> u64 {
    let Budget { crashes, node_downs, duplicates, retries } = state.left;
    let budget = u64::from_le_bytes([crashes, node_downs, duplicates, retries, 0, 0, 0, 1]);
    (fingerprint_without_budget(state) ^ budget.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(29)
}

/// The fingerprint of everything but the budget left: two states with the same one differ
/// only in how many crashes, `NodeDown`s, duplicates and retries they may still use.
fn fingerprint_without_budget(state: &State) -> u64 {
    let State { catalog, nodes, network, acked, reads, sent, left: _, anomaly } = state;
    let mut hasher = StateHasher::default();
    (catalog, nodes, network, pack(acked), reads, sent, anomaly).hash(&mut hasher);
    hasher.finish()
}

/// A fast 64-bit hash for fingerprints (SipHash dominated the run time of a debug build):
/// multiply-rotate per word, with a final avalanche. Two distinct states share a
/// fingerprint with a probability of about `states^2 / 2^65` (hash compaction).
#[derive(Default)]
struct StateHasher(u64);

impl Hasher for StateHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(23) ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }
}

type Fingerprints = HashSet<u64, BuildHasherDefault<FingerprintHasher>>;
/// Per fingerprint without budget, the largest budget explored with it.
type BestBudgets = HashMap<u64, Budget, BuildHasherDefault<FingerprintHasher>>;

/// Hashes a fingerprint (already a good hash) to itself.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

struct Counterexample {
    violation: Violation,
    initial: State,
    steps: Vec<(Action, State)>,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let in_flight = |state: &State| -> String {
            let messages: Vec<String> = state.network.iter().map(Envelope::to_string).collect();
            if messages.is_empty() {
                String::new()
            } else {
                format!("\n           in flight: {}", messages.join("; "))
            }
        };
        writeln!(f, "   0. initial: {}{}", self.initial, in_flight(&self.initial))?;
        for (number, (action, state)) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>2}. {action}\n        -> {state}{}", number + 1, in_flight(state))?;
        }
        write!(f, "  violation: {}", self.violation)
    }
}

struct Exploration {
    states: usize,
    transitions: usize,
    levels: usize,
    /// Whether every reachable state within the bounds was explored (no depth cut-off).
    exhausted: bool,
    recovery_checks: usize,
    elapsed: Duration,
    found: Option<Counterexample>,
}

impl fmt::Display for Exploration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} states, {} transitions, {} levels{}, {:.1} s",
            self.states,
            self.transitions,
            self.levels,
            match (&self.found, self.exhausted) {
                (Some(_), _) => " (stopped at the first violation)",
                (None, true) => " (state space exhausted)",
                (None, false) => " (cut off at the depth bound)",
            },
            self.elapsed.as_secs_f64()
        )?;
        if self.recovery_checks > 0 {
            write!(f, ", recovery checked in {} all-up states", self.recovery_checks)?;
        }
        Ok(())
    }
}

/// Explores the model breadth-first and stops at the first state that breaks a property
/// `wanted` accepts, so its trace is a shortest one. A state is skipped when one that
/// differs only by a budget at least as large was explored (it can do all this one can).
fn explore(model: &Model, wanted: impl Fn(Violation) -> bool) -> Exploration {
    let began = Instant::now();
    let initial = State::initial(model);
    let mut visited = Fingerprints::default();
    let mut best_budget = BestBudgets::default();
    let mut recovering = Fingerprints::default();
    // Per state index: its fingerprint and its parent's index, to rebuild a trace.
    let mut fingerprints = vec![fingerprint(&initial)];
    let mut parents = vec![0_u32];
    visited.insert(fingerprints[0]);
    best_budget.insert(fingerprint_without_budget(&initial), initial.left);
    let mut frontier = vec![(0_u32, initial.clone())];
    let mut exploration = Exploration {
        states: 1,
        transitions: 0,
        levels: 0,
        exhausted: false,
        recovery_checks: 0,
        elapsed: Duration::ZERO,
        found: None,
    };
    while !frontier.is_empty() && exploration.levels < model.bounds.depth {
        exploration.levels += 1;
        if std::env::var_os("REPLICATION_MODEL_PROGRESS").is_some() {
            eprintln!(
                "level {:>3}: {:>9} new states, {:>10} in all, {:.1} s",
                exploration.levels,
                frontier.len(),
                fingerprints.len(),
                began.elapsed().as_secs_f64()
            );
        }
        let mut next_frontier = Vec::new();
        for (parent, state) in &frontier {
            for action in state.candidate_actions(model) {
                let Some(next) = state.after(model, action) else { continue };
                exploration.transitions += 1;
                let key = fingerprint_without_budget(&next);
                match best_budget.get(&key) {
                    Some(explored) if explored.covers(next.left) => continue,
                    Some(explored) if !next.left.covers(*explored) => {} // two incomparable budgets
                    _ => {
                        best_budget.insert(key, next.left);
                    }
                }
                let print = fingerprint(&next);
                if !visited.insert(print) {
                    continue;
                }
                let index = u32::try_from(fingerprints.len()).expect("fewer than 2^32 states");
                fingerprints.push(print);
                parents.push(*parent);
                let mut violations = next.violations();
                if model.check_recovery && next.all_up() {
                    exploration.recovery_checks += 1;
                    if !next.can_recover(model, &mut recovering) {
                        violations.push(Violation::OwnerCannotBecomeReady);
                    }
                }
                if let Some(violation) = violations.into_iter().find(|v| wanted(*v)) {
                    exploration.states = fingerprints.len();
                    exploration.elapsed = began.elapsed();
                    let steps = rebuild_trace(model, &initial, &fingerprints, &parents, index);
                    exploration.found = Some(Counterexample { violation, initial, steps });
                    return exploration;
                }
                next_frontier.push((index, next));
            }
        }
        frontier = next_frontier;
    }
    exploration.exhausted = frontier.is_empty();
    exploration.states = fingerprints.len();
    exploration.elapsed = began.elapsed();
    exploration
}

/// Replays the path to state `index`: at each step, the action whose successor has the
/// recorded fingerprint.
fn rebuild_trace(
    model: &Model,
    initial: &State,
    fingerprints: &[u64],
    parents: &[u32],
    index: u32,
) -> Vec<(Action, State)> {
    let mut path = vec![index];
    let mut at = index;
    while at != 0 {
        at = parents[at as usize];
        path.push(at);
    }
    path.reverse();
    let mut state = initial.clone();
    let mut steps = Vec::new();
    for &index in &path[1..] {
        let target = fingerprints[index as usize];
        let (action, next) = state
            .candidate_actions(model)
            .into_iter()
            .filter_map(|action| state.after(model, action).map(|next| (action, next)))
            .find(|(_, next)| fingerprint(next) == target)
            .expect("every recorded state has a recorded parent that reaches it");
        steps.push((action, next.clone()));
        state = next;
    }
    with_real_epochs(model, initial, steps)
}

/// The same run with epochs as the catalog numbered them (the search renumbers them).
fn with_real_epochs(model: &Model, initial: &State, steps: Vec<(Action, State)>) -> Vec<(Action, State)> {
    let mut real = initial.clone();
    let mut replayed = Vec::new();
    for (action, renumbered) in steps {
        let action = match action {
            Action::Deliver { envelope, duplicate } => {
                let used = real.epochs_in_use();
                let envelope = *real
                    .network
                    .iter()
                    .find(|e| Envelope { body: e.body.with_epoch(rank_among(used, e.body.epoch())), ..**e } == envelope)
                    .expect("the renumbered message is in flight");
                Action::Deliver { envelope, duplicate }
            }
            other => other,
        };
        real = real.after_keeping_epochs(model, action).expect("the replayed step is enabled");
        let mut check = real.clone();
        check.renumber_epochs();
        assert_eq!(check, renumbered, "the replay with real epochs follows the trace");
        replayed.push((action, real.clone()));
    }
    replayed
}

fn run(name: &str, model: Model, wanted: impl Fn(Violation) -> bool) -> Exploration {
    println!("{name}: {:?}, {}", model.rules, model.bounds);
    let exploration = explore(&model, wanted);
    println!("{name}: {exploration}");
    if let Some(counterexample) = &exploration.found {
        println!("{name}: shortest counterexample ({} steps):\n{counterexample}", counterexample.steps.len());
    }
    exploration
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn old_rules_lose_an_acknowledged_message() {
    let model = Model { reads: false, ..Model::new(Rules::Old, Bounds::DEFAULT) };
    let exploration = run("old_rules_lose_an_acknowledged_message", model, |v| v.property() == Property::Durability);
    let found = exploration.found.expect("the old rules lose an acknowledged message");
    assert!(matches!(found.violation, Violation::AcknowledgedMessageLost { .. }));
}

#[test]
fn old_rules_lose_an_acknowledged_message_with_an_accurate_failure_detector() {
    let bounds = Bounds { crashes: 2, ..Bounds::DEFAULT };
    let model = Model { reads: false, accurate_failure_detector: true, ..Model::new(Rules::Old, bounds) };
    let name = "old_rules_lose_an_acknowledged_message_with_an_accurate_failure_detector";
    let exploration = run(name, model, |v| v.property() == Property::Durability);
    let found = exploration.found.expect("the old rules lose an acknowledged message when only crashed nodes go down");
    assert!(matches!(found.violation, Violation::AcknowledgedMessageLost { .. }));
}

#[test]
fn old_rules_let_a_reader_see_a_rolled_back_message() {
    let model = Model::new(Rules::Old, Bounds::DEFAULT);
    let exploration =
        run("old_rules_let_a_reader_see_a_rolled_back_message", model, |v| v.property() == Property::ReadAgreement);
    let found = exploration.found.expect("the old rules let a read return a message that is later replaced");
    let rolled_back = found.steps.iter().any(|(action, _)| matches!(action, Action::Timeout(_)));
    assert!(rolled_back, "the reader saw a batch that was rolled back");
}

fn assert_no_violation(name: &str, model: Model) {
    let exploration = run(name, model, |_| true);
    if let Some(found) = &exploration.found {
        panic!("{name}: {} (trace above)", found.violation);
    }
    assert!(exploration.exhausted || model.bounds.depth != usize::MAX, "the bounded state space was explored");
}

#[test]
fn new_rules_keep_every_acknowledged_message() {
    let model = Model { check_recovery: true, ..Model::new(Rules::NEW, Bounds::DEFAULT) };
    assert_no_violation("new_rules_keep_every_acknowledged_message", model);
}

#[test]
fn new_rules_keep_every_acknowledged_message_across_a_client_retry() {
    let model = Model::new(Rules::NEW, Bounds::WITH_A_RETRY);
    assert_no_violation("new_rules_keep_every_acknowledged_message_across_a_client_retry", model);
}

#[test]
fn new_rules_keep_every_acknowledged_message_across_a_duplicate_delivery() {
    let model = Model::new(Rules::NEW, Bounds::WITH_A_DUPLICATE);
    assert_no_violation("new_rules_keep_every_acknowledged_message_across_a_duplicate_delivery", model);
}

/// The shortest run of the new rules without `rule` that breaks `property`, if any.
fn without(rule: Rule, property: Property) -> Exploration {
    let name = format!("new_rules_without_{rule:?}");
    run(&name, Model::new(Rules::New { without: Some(rule) }, Bounds::DEFAULT), |v| v.property() == property)
}

#[test]
fn new_rules_as_first_written_lose_an_acknowledged_message_to_a_late_adopt() {
    let exploration = without(Rule::AdoptSparesItsEpoch, Property::Durability);
    let found = exploration.found.expect("a late Adopt of the same epoch drops an acknowledged message");
    let late_adopt = found.steps.iter().any(|(action, _)| {
        matches!(action, Action::Deliver { envelope: Envelope { body: Body::Adopt { .. }, current: false, .. }, .. })
            || matches!(
                action,
                Action::Deliver { envelope: Envelope { body: Body::Adopt { .. }, .. }, duplicate: true }
            )
    });
    assert!(late_adopt, "the acknowledged message is dropped by an Adopt that arrives late");
}

/// The same with crashes only: the owner crashes after the acknowledgement, its in-sync
/// replica is promoted, and the late `Adopt` empties it first.
#[test]
fn new_rules_as_first_written_lose_a_message_to_a_late_adopt_with_an_accurate_failure_detector() {
    let bounds = Bounds { crashes: 2, ..Bounds::DEFAULT };
    let rules = Rules::New { without: Some(Rule::AdoptSparesItsEpoch) };
    let model = Model { accurate_failure_detector: true, ..Model::new(rules, bounds) };
    let name = "new_rules_as_first_written_lose_a_message_to_a_late_adopt_with_an_accurate_failure_detector";
    let exploration = run(name, model, |v| v.property() == Property::Durability);
    assert!(exploration.found.is_some(), "a late Adopt empties the in-sync replica before it is promoted");
}

#[test]
fn new_rules_without_in_sync_promotion_lose_an_acknowledged_message() {
    let exploration = without(Rule::PromoteOnlyInSync, Property::Durability);
    assert!(exploration.found.is_some(), "promoting a replica that is not in sync loses an acknowledged message");
}

#[test]
fn new_rules_with_rollback_lose_an_acknowledged_message() {
    let exploration = without(Rule::KeepTimedOutBatch, Property::Durability);
    assert!(exploration.found.is_some(), "rolling a timed-out batch back loses an acknowledged message");
}

#[test]
fn new_rules_without_commit_bounded_reads_let_a_reader_see_a_replaced_message() {
    let exploration = without(Rule::ReadUpToCommit, Property::ReadAgreement);
    assert!(exploration.found.is_some(), "reading past the commit point returns a message that is later replaced");
}

/// Rule 4 is defence in depth: with one batch in flight per owner, no rollback and `Adopt`
/// sparing its own epoch, no replica is ever asked to store past a gap or a different entry
/// within these bounds (the search reaches as many states with and without it). Ignored by
/// default because it takes as long as the main search: `cargo test -- --ignored`.
#[test]
#[ignore = "as long as the main search; shows that dropping rule 4 finds nothing"]
fn new_rules_without_the_prev_check_still_keep_every_message_within_the_bounds() {
    let model = Model::new(Rules::New { without: Some(Rule::ReplicateNamesPrev) }, Bounds::DEFAULT);
    assert_no_violation("new_rules_without_the_prev_check_still_keep_every_message_within_the_bounds", model);
}
