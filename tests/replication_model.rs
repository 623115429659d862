//! An explicit-state model checker of room replication (see `docs/REPLICATION.md`), under
//! today's rules ([`Rules::Old`]) and the rules the team will implement ([`Rules::New`]),
//! with each new rule switchable on its own ([`Rule`]).
//!
//! What it models: one room on three chat nodes (A, B, C). The control-plane catalog is one
//! linearizable state: node status (`Up`/`Down`), the room's owner, replica and epoch and,
//! under the new rules, whether the replica is in sync. Each node keeps on disk the room log
//! (seq -> message id), the room's fence (highest epoch accepted) and, under the new rules,
//! the I8 mark and the missing range of a background copy; in memory, its owner task when the
//! catalog view it last fetched makes it the owner (epoch, replica, start phase, pending
//! batch, commit point, back-fill left). Owners run start (fence, `Adopt` rounds, then copy
//! one entry per `Replicate`, or seed, see below), take one message per batch, and
//! acknowledge on `Stored`. Nondeterminism explored: `NodeDown` for any `Up` node at any time
//! (the failure detector may be wrong and late), `NodeUp` of a running `Down` node, crashes
//! (memory lost, disk kept) and restarts, catalog fetches at any time, owner timeouts at any
//! time, client sends and retries (answered by dedupe), reads from any node that believes it
//! owns the room, and a network that delivers in any order, drops (never delivers), and
//! delivers a bounded number of messages twice (every message kind alike).
//!
//! The background copy (back-fill; `docs/REPLICATION.md`, "Background copy", I9), part of
//! the new rules ([`Model::inline_copy`]): `Adopted` also reports the replica's missing range.
//! A replica that lacks more than `INLINE_COPY` (1 in the model, so that two messages reach
//! both paths) entries past its last one is seeded: `Seed { after, seq, id }` (the owner's
//! last entry), which the replica stores only at its fence's epoch and while its log still
//! ends at `after`, recording in the same durable write the I8 mark and the missing range
//! (joined to one it had); `Seeded { missing }` makes the owner ready (commit point at its
//! last entry) without reporting the replica in sync. A smaller gap is copied inline as
//! before, and a missing range the replica reported is back-filled after it. Between batches
//! the ready owner sends `Backfill` (one entry: its own at the start of the range); the
//! replica stores it only at its fence's epoch and at the start of its range, shrinking the
//! range in the same write, and always answers `Backfilled { missing }`; the owner goes on
//! from that answer, retries a chunk that got no answer later (staying ready), and reports
//! the replica in sync at `missing: None`. An `Adopt` that cuts into or below a missing range
//! truncates to the prefix below it and drops the range; a node with a missing range refuses
//! to start as owner. Three rules can be dropped for ablations: reporting in sync only once
//! complete, the missing range being durable, and `Adopted` reporting it.
//!
//! What it abstracts away: real time (a timeout may fire whenever an owner waits); message
//! contents other than their id; batches and back-fill chunks of more than one message; more
//! than one room (rooms share nothing but node status); the Raft machinery of the catalog;
//! request ids (an answer counts only for the exchange still waiting for it); refusals (a
//! refused request gets no answer; the owner's timeout does what the error would);
//! connections (a crash loses what was addressed to the node, a send to a stopped node is
//! lost); `min_copies = 1` (an owner without a replica takes no sends); the `Adopt` refusal
//! past `MAX_BATCH` entries and the 256-stamp tail limit (neither binds with a few messages);
//! the back-fill rate limit (any interleaving of chunks and batches is explored); replica-side
//! reads (so "a copy with a missing range serves no reads" is not checked); fan-out,
//! presence, drains.
//!
//! Checked in every reachable state: every acknowledged message, and every message a read
//! returned, is at its seq in the log of the catalog's owner whenever that owner has finished
//! start; no two reads returned different messages at one seq; no message was acknowledged at
//! two seqs; a replica the catalog shows in sync has no missing range (I9). Optionally also:
//! from every state where all nodes run and are `Up`, one fair schedule (fetch the catalog,
//! send back-fill chunks, deliver the owner's messages in order) makes the owner ready with
//! no back-fill left.
//!
//! The search is breadth-first, so a counterexample is a shortest one. It stores 64-bit
//! fingerprints, not states (hash compaction), and merges states that cannot behave
//! differently: epochs are renumbered densely, messages that can no longer change anything
//! are dropped, and a state whose remaining fault budget is covered by an explored twin's is
//! skipped. Bounds: [`Bounds`], each overridden by a `REPLICATION_MODEL_*` environment
//! variable (see [`Bounds::overridden_by_env`]; `REPLICATION_MODEL_INLINE_COPY` sets
//! `INLINE_COPY`, `off` for no background copy); run with `-- --nocapture` to see state
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
    /// Background copy (I9): the owner reports its replica in sync only once the replica holds
    /// the whole log, i.e. after a start-up that left nothing missing or after an answer
    /// `Backfilled { missing: None }`; not as soon as it is ready after a `Seeded`.
    InSyncOnlyWhenComplete,
    /// Background copy: the missing range is on disk, written in the same durable write as
    /// the seed and as each chunk that shrinks it (without: a crash forgets it).
    DurableMissingRange,
    /// Background copy: `Adopted` reports the replica's missing range, so an owner that starts
    /// again resumes the copy (without: it takes the replica for complete).
    AdoptedReportsMissing,
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
    /// The background copy (`INLINE_COPY`, 1,000 in `owner.rs`): `Some(n)` seeds a replica
    /// that lacks more than `n` entries past its last one and fills in the older log behind
    /// live sends; `None` copies everything inline before taking sends (the design before the
    /// background copy, and the old rules).
    inline_copy: Option<Seq>,
    /// Dormant owners (docs/REPLICATION.md, "Dormant owners"): an owner task spawned for a
    /// room whose log is empty on its node, whole and not fenced past its epoch, while the
    /// catalog shows the replica in sync, does not start until a client sends to it.
    /// `false` starts every task at once (the rules before dormant owners).
    dormant_owners: bool,
}

impl Model {
    /// `INLINE_COPY` in the model. With 1 both paths are reachable with two messages: a
    /// replica one entry behind is copied inline (as before), one two entries behind (empty,
    /// while the owner holds m1 and m2) is seeded with m2 and back-filled with m1. 0 would
    /// never copy inline; a seed then refuses a gap of one (the replica refuses a seed that
    /// records nothing missing, as `seed_at` does) and that start never finishes. Larger
    /// values need more messages to seed at all. `REPLICATION_MODEL_INLINE_COPY` overrides it
    /// (`off`: no background copy).
    const INLINE_COPY: Seq = 1;

    fn new(rules: Rules, bounds: Bounds) -> Model {
        let inline_copy = match rules {
            Rules::Old => None,
            Rules::New { .. } => match std::env::var("REPLICATION_MODEL_INLINE_COPY").ok().as_deref() {
                Some("off") => None,
                Some(value) => Some(value.parse().expect("REPLICATION_MODEL_INLINE_COPY: a number or `off`")),
                None => Some(Model::INLINE_COPY),
            },
        };
        Model {
            rules,
            bounds: bounds.overridden_by_env(),
            reads: true,
            check_recovery: false,
            accurate_failure_detector: false,
            inline_copy,
            dormant_owners: false,
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

/// Seqs `lo..=hi` a replica lacks below its seed (background copy), never empty.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct Missing {
    lo: Seq,
    hi: Seq,
}

impl Missing {
    /// `lo..=hi`, or `None` when that is empty.
    fn between(lo: Seq, hi: Seq) -> Option<Missing> {
        (lo <= hi).then_some(Missing { lo, hi })
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.lo, self.hi)
    }
}

/// `missing: ...` as a message or a node shows it.
fn show_missing(missing: Option<Missing>) -> String {
    missing.map_or("none".to_string(), |missing| missing.to_string())
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
    /// Waits for a client's send to start ([`Model::dormant_owners`]): the room's log was
    /// empty on this node and the replica in sync when the task was spawned.
    Dormant,
    /// Start was refused: a newer epoch holds the room on this node's disk. (Start runs as
    /// soon as a task is spawned and again right after a timeout: running it later reaches
    /// no other states, since whatever could happen in between could as well happen before.)
    Fenced,
    /// Waiting for `Adopted`; `target` is the own log's last seq when start began.
    Adopting { target: Seq },
    /// Start was refused: this node's own copy has a missing range (only an in-sync replica
    /// is promoted, so only an ablation gets here).
    Incomplete,
    /// Waiting for `Stored` of the entry after `replica_last`.
    Copying { replica_last: Seq, target: Seq },
    /// Waiting for `Seeded`: the replica lacked more than `INLINE_COPY` entries and is sent
    /// the own entry at `target` only.
    Seeding { target: Seq },
    /// Start completed: takes sends (and, with a back-fill pending, sends chunks between
    /// batches).
    Ready,
    /// Waiting for `Stored` of the one-message batch `(seq, id)`.
    Sending { seq: Seq, id: MessageId },
    /// Start completed; waiting for `Backfilled` (one chunk per turn: no send meanwhile).
    Backfilling,
}

impl Phase {
    fn is_ready(self) -> bool {
        matches!(self, Phase::Ready | Phase::Sending { .. } | Phase::Backfilling)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Phase::Dormant => write!(f, "dormant (waits for a send)"),
            Phase::Fenced => write!(f, "fenced out"),
            Phase::Incomplete => write!(f, "refuses to start (own copy has a missing range)"),
            Phase::Adopting { target } => write!(f, "adopting (own log ends at {target})"),
            Phase::Copying { replica_last, target } => write!(f, "copying (replica has {replica_last} of {target})"),
            Phase::Seeding { target } => write!(f, "seeding (own log ends at {target})"),
            Phase::Ready => write!(f, "ready"),
            Phase::Sending { seq, id } => write!(f, "sending m{id} as seq {seq}"),
            Phase::Backfilling => write!(f, "back-filling"),
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
    /// The background copy still to do: what the replica last said it lacks (set once start
    /// completed; `None`: nothing, or no background copy).
    backfill: Option<Missing>,
}

impl OwnerTask {
    fn spawned(room: Placement) -> OwnerTask {
        OwnerTask { epoch: room.epoch, replica: room.replica, phase: Phase::Fenced, commit: 0, backfill: None }
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
    /// Disk (unless [`Rule::DurableMissingRange`] is dropped): the seqs below its seed this
    /// node lacks as a replica while its owner back-fills them.
    missing: Option<Missing>,
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

/// What travels. Background copy: `Seed` asks the replica to store the owner's last entry
/// `(seq, id)` if its log still ends at `after` and to record what lies between as missing;
/// `Backfill` is one older entry of the owner's log for the start of the missing range;
/// `Seeded` and `Backfilled` (both `Copied` in `protocol.rs`) say what the replica still lacks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Body {
    Adopt { epoch: Epoch, base: Seq },
    Replicate { epoch: Epoch, seq: Seq, id: MessageId, prev: (Seq, MessageId) },
    Seed { epoch: Epoch, after: Seq, seq: Seq, id: MessageId },
    Backfill { epoch: Epoch, seq: Seq, id: MessageId },
    Adopted { epoch: Epoch, last: Seq, tail: Log, missing: Option<Missing> },
    Stored { epoch: Epoch, seq: Seq },
    Seeded { epoch: Epoch, missing: Option<Missing> },
    Backfilled { epoch: Epoch, missing: Option<Missing> },
    ReplicaInSync { epoch: Epoch },
}

impl Body {
    fn epoch(self) -> Epoch {
        match self {
            Body::Adopt { epoch, .. }
            | Body::Replicate { epoch, .. }
            | Body::Seed { epoch, .. }
            | Body::Backfill { epoch, .. }
            | Body::Adopted { epoch, .. }
            | Body::Stored { epoch, .. }
            | Body::Seeded { epoch, .. }
            | Body::Backfilled { epoch, .. }
            | Body::ReplicaInSync { epoch } => epoch,
        }
    }

    fn with_epoch(self, epoch: Epoch) -> Body {
        match self {
            Body::Adopt { base, .. } => Body::Adopt { epoch, base },
            Body::Replicate { seq, id, prev, .. } => Body::Replicate { epoch, seq, id, prev },
            Body::Seed { after, seq, id, .. } => Body::Seed { epoch, after, seq, id },
            Body::Backfill { seq, id, .. } => Body::Backfill { epoch, seq, id },
            Body::Adopted { last, tail, missing, .. } => Body::Adopted { epoch, last, tail, missing },
            Body::Stored { seq, .. } => Body::Stored { epoch, seq },
            Body::Seeded { missing, .. } => Body::Seeded { epoch, missing },
            Body::Backfilled { missing, .. } => Body::Backfilled { epoch, missing },
            Body::ReplicaInSync { .. } => Body::ReplicaInSync { epoch },
        }
    }

    fn is_request(self) -> bool {
        matches!(self, Body::Adopt { .. } | Body::Replicate { .. } | Body::Seed { .. } | Body::Backfill { .. })
    }

    fn is_response(self) -> bool {
        matches!(self, Body::Adopted { .. } | Body::Stored { .. } | Body::Seeded { .. } | Body::Backfilled { .. })
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
            Body::Seed { epoch, after, seq, id } => write!(f, "Seed{{epoch {epoch}, after {after}, seq {seq}: m{id}}}"),
            Body::Backfill { epoch, seq, id } => write!(f, "Backfill{{epoch {epoch}, seq {seq}: m{id}}}"),
            Body::Adopted { epoch, last, tail, missing: None } => {
                write!(f, "Adopted{{epoch {epoch}, last {last}, tail {tail}}}")
            }
            Body::Adopted { epoch, last, tail, missing: Some(missing) } => {
                write!(f, "Adopted{{epoch {epoch}, last {last}, tail {tail}, missing {missing}}}")
            }
            Body::Stored { epoch, seq } => write!(f, "Stored{{epoch {epoch}, seq {seq}}}"),
            Body::Seeded { epoch, missing } => write!(f, "Seeded{{epoch {epoch}, missing {}}}", show_missing(missing)),
            Body::Backfilled { epoch, missing } => {
                write!(f, "Backfilled{{epoch {epoch}, missing {}}}", show_missing(missing))
            }
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
    /// The catalog shows the replica in sync, yet it has a missing range (I9).
    InSyncReplicaIncomplete { replica: NodeId, missing: Missing },
    /// All nodes run and are `Up`, yet the owner cannot become ready and finish its back-fill.
    OwnerCannotBecomeReady,
}

/// The property a violation breaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Property {
    Durability,
    ReadAgreement,
    NoDuplicate,
    /// I9: a replica the catalog shows in sync has no missing range.
    InSyncMeansComplete,
    Recovery,
}

impl Violation {
    fn property(self) -> Property {
        match self {
            Violation::AcknowledgedMessageLost { .. } => Property::Durability,
            Violation::ReadMessageLost { .. } | Violation::ReadsDisagree { .. } => Property::ReadAgreement,
            Violation::AcknowledgedTwice { .. } => Property::NoDuplicate,
            Violation::InSyncReplicaIncomplete { .. } => Property::InSyncMeansComplete,
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
            Violation::InSyncReplicaIncomplete { replica, missing } => {
                write!(f, "the catalog shows replica {} in sync, but it lacks seqs {missing} (I9)", node_name(replica))
            }
            Violation::OwnerCannotBecomeReady => {
                write!(f, "all nodes are up, yet no schedule makes the owner ready and finish its back-fill")
            }
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
    /// The ready owner sends the next back-fill chunk (between batches).
    Backfill(NodeId),
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
            Action::Backfill(node) => write!(f, "{} sends the next back-fill chunk", node_name(node)),
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
    /// A's owner task has run start (its `Adopt` is in flight), or, with dormant owners,
    /// waits for a send.
    fn initial(model: &Model) -> State {
        let room = Placement { owner: 0, replica: Some(1), epoch: 1 };
        let idle =
            ChatNode { running: true, log: Log::default(), fence: 0, stored_at_fence: 0, missing: None, owner: None };
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
        if model.dormant_owners {
            if let Some(task) = state.task_mut(0) {
                task.phase = Phase::Dormant;
            }
        } else {
            state.start(model, 0);
        }
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
                            if task.backfill.is_some() {
                                actions.push(Action::Backfill(node));
                            }
                        }
                        // A send wakes it (any id: `client_send` takes none).
                        Phase::Dormant => actions.push(Action::Send { node, id: 1 }),
                        Phase::Fenced | Phase::Incomplete => {}
                        Phase::Adopting { .. }
                        | Phase::Copying { .. }
                        | Phase::Seeding { .. }
                        | Phase::Sending { .. }
                        | Phase::Backfilling => actions.push(Action::Timeout(node)),
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
            Action::Backfill(node) => next.send_backfill(node),
            Action::Read(node) => next.read(model, node),
            Action::Refresh(node) => next.refresh(model, node),
            Action::Crash(node) => next.crash(model, node),
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

    /// Start: raise the own fence (or stay `Fenced`), refuse if the own copy has a missing
    /// range, then `Adopt` (or, without a replica, ready at once).
    fn start(&mut self, model: &Model, node: NodeId) {
        let chat_node = self.node_mut(node);
        let Some(task) = chat_node.owner.as_mut() else { return };
        task.phase = Phase::Fenced;
        task.backfill = None;
        let task = *task;
        if chat_node.fence > task.epoch {
            return;
        }
        let base = chat_node.log.last();
        chat_node.raise_fence(task.epoch);
        if chat_node.missing.is_some() {
            // `Owner::start` refuses: owning the room would serve and build on a log with a hole.
            if let Some(task) = chat_node.owner.as_mut() {
                task.phase = Phase::Incomplete;
            }
            return;
        }
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

    /// The replica holds the own log up to `target`, except what `backfill` says it still
    /// lacks: ready, and the replica is reported in sync unless a back-fill is left.
    fn complete_start(&mut self, model: &Model, node: NodeId, target: Seq) {
        let Some(task) = self.task_mut(node) else { return };
        task.phase = Phase::Ready;
        task.commit = target;
        if task.backfill.is_none() || !model.rules.has(Rule::InSyncOnlyWhenComplete) {
            self.report_in_sync(model, node);
        }
    }

    /// `ReplicasInSync` in the next heartbeat (one message here, which may be late or lost).
    fn report_in_sync(&mut self, model: &Model, node: NodeId) {
        let Some(task) = self.node(node).owner else { return };
        if task.replica.is_some() && model.rules.has(Rule::PromoteOnlyInSync) {
            self.send(node, Address::Catalog, true, Body::ReplicaInSync { epoch: task.epoch });
        }
    }

    /// Background copy: sends the replica (whose log ends at `after`) only the own entry at
    /// `target` (`Owner::seed`).
    fn seed(&mut self, node: NodeId, replica: NodeId, after: Seq, target: Seq) {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return };
        let id = chat_node.log.at(target);
        if id != 0 {
            // (A stale owner whose log a newer owner rewrote may lack it: its start fails.)
            self.send(node, Address::Node(replica), true, Body::Seed { epoch: task.epoch, after, seq: target, id });
        }
        if let Some(task) = self.task_mut(node) {
            task.phase = Phase::Seeding { target };
        }
    }

    /// Owner side of `Seeded`: ready, with the back-fill the replica asks for.
    fn seeded(&mut self, model: &Model, node: NodeId, missing: Option<Missing>) {
        let Some(task) = self.node(node).owner else { return };
        let Phase::Seeding { target } = task.phase else { return };
        self.retire_exchange(node);
        if let Some(task) = self.task_mut(node) {
            task.backfill = missing;
        }
        self.complete_start(model, node, target);
    }

    /// Background copy: one chunk (one entry here) from the start of the missing range, between
    /// batches (`Owner::backfill_step`).
    fn send_backfill(&mut self, node: NodeId) -> bool {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return false };
        let (Phase::Ready, Some(missing), Some(replica)) = (task.phase, task.backfill, task.replica) else {
            return false;
        };
        let id = chat_node.log.at(missing.lo);
        if !chat_node.running || id == 0 {
            return false;
        }
        self.retire_exchange(node);
        self.send(node, Address::Node(replica), true, Body::Backfill { epoch: task.epoch, seq: missing.lo, id });
        if let Some(task) = self.task_mut(node) {
            task.phase = Phase::Backfilling;
        }
        true
    }

    /// Owner side of `Backfilled`: continue from what the replica says; report it in sync
    /// once it lacks nothing.
    fn backfilled(&mut self, model: &Model, node: NodeId, missing: Option<Missing>) {
        let Some(task) = self.node(node).owner else { return };
        if task.phase != Phase::Backfilling {
            return;
        }
        self.retire_exchange(node);
        if let Some(task) = self.task_mut(node) {
            task.phase = Phase::Ready;
            task.backfill = missing;
        }
        if missing.is_none() {
            self.report_in_sync(model, node);
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
        let chat_node = self.node(node);
        if chat_node.running && chat_node.owner.is_some_and(|task| task.phase == Phase::Dormant) {
            // A dormant owner starts at a send; the send waits for the start, which is the
            // same as being refused and sent again once the owner is ready (no message id is
            // used up here).
            self.start(model, node);
            return true;
        }
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
    /// again (new rules) or the batch is rolled back (old rules); a back-fill chunk is sent
    /// again later (`BACKFILL_RETRY`), the owner staying ready.
    fn timeout(&mut self, model: &Model, node: NodeId) -> bool {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return false };
        let fence = chat_node.fence;
        self.retire_exchange(node);
        match task.phase {
            Phase::Dormant | Phase::Fenced | Phase::Incomplete | Phase::Ready => return false,
            Phase::Backfilling => {
                if let Some(task) = self.task_mut(node) {
                    task.phase = Phase::Ready;
                }
            }
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
            Phase::Adopting { .. } | Phase::Copying { .. } | Phase::Seeding { .. } | Phase::Sending { .. } => {
                self.start(model, node)
            }
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
            let in_sync = room.replica.is_some() && self.catalog.replica_in_sync;
            let chat_node = self.node_mut(node);
            chat_node.owner = Some(OwnerTask::spawned(room));
            let nothing_to_sync = chat_node.log.entries().next().is_none()
                && chat_node.missing.is_none()
                && chat_node.fence <= room.epoch
                && in_sync;
            if model.dormant_owners && nothing_to_sync {
                if let Some(task) = self.task_mut(node) {
                    task.phase = Phase::Dormant;
                }
            } else {
                self.start(model, node);
            }
        }
        true
    }

    fn refresh(&mut self, model: &Model, node: NodeId) -> bool {
        self.node(node).running && self.install_view(model, node)
    }

    fn crash(&mut self, model: &Model, node: NodeId) -> bool {
        if !self.node(node).running || self.left.crashes == 0 {
            return false;
        }
        self.left.crashes -= 1;
        let chat_node = self.node_mut(node);
        chat_node.running = false;
        chat_node.owner = None;
        if !model.rules.has(Rule::DurableMissingRange) {
            chat_node.missing = None;
        }
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
            (Address::Node(node), Body::Seed { epoch, after, seq, id }) => {
                self.store_seed(model, node, envelope, (epoch, after, seq, id))
            }
            (Address::Node(node), Body::Backfill { epoch, seq, id }) => {
                self.store_backfill(node, envelope, (epoch, seq, id))
            }
            (Address::Node(node), Body::Adopted { last, tail, missing, .. }) => {
                self.adopted(model, node, last, tail, missing)
            }
            (Address::Node(node), Body::Stored { seq, .. }) => self.stored(model, node, seq),
            (Address::Node(node), Body::Seeded { missing, .. }) => self.seeded(model, node, missing),
            (Address::Node(node), Body::Backfilled { missing, .. }) => self.backfilled(model, node, missing),
            (Address::Catalog, _) | (Address::Node(_), Body::ReplicaInSync { .. }) => {}
        }
        true
    }

    /// Replica side of `Adopt`: fence, drop what lies past `base`, show the tail and the
    /// missing range.
    fn adopt(&mut self, model: &Model, node: NodeId, request: Envelope, epoch: Epoch, base: Seq) {
        let chat_node = self.node_mut(node);
        if epoch < chat_node.fence {
            return;
        }
        chat_node.raise_fence(epoch);
        let keep = if model.rules.has(Rule::AdoptSparesItsEpoch) { chat_node.stored_at_fence } else { 0 };
        let cut = base.max(keep);
        match chat_node.missing {
            // `take_epoch`: cutting into or below a missing range leaves the plain prefix below
            // it, and no missing range.
            Some(missing) if cut <= missing.hi => {
                chat_node.log.truncate_after(cut.min(missing.lo - 1));
                chat_node.missing = None;
            }
            _ => chat_node.log.truncate_after(cut),
        }
        let (last, tail) = (chat_node.log.last(), chat_node.log);
        let missing = if model.rules.has(Rule::AdoptedReportsMissing) { chat_node.missing } else { None };
        self.send(node, Address::Node(request.from), request.current, Body::Adopted { epoch, last, tail, missing });
    }

    /// Replica side of `Seed` (`seed_at`): refused (nothing written, no answer: the owner times
    /// out) unless this node adopted `epoch`, its log still ends at `after` and the seed lies
    /// past `after + 1`. Then, in one durable write: the entry, the I8 mark and the missing
    /// range, joined to one it already had.
    fn store_seed(
        &mut self,
        model: &Model,
        node: NodeId,
        request: Envelope,
        (epoch, after, seq, id): (Epoch, Seq, Seq, MessageId),
    ) {
        let chat_node = self.node_mut(node);
        if epoch != chat_node.fence || chat_node.log.last() != after || seq <= after + 1 {
            return;
        }
        chat_node.log.put(seq, id);
        if model.rules.has(Rule::AdoptSparesItsEpoch) {
            chat_node.stored_at_fence = chat_node.stored_at_fence.max(seq);
        }
        let lo = chat_node.missing.map_or(after + 1, |missing| missing.lo);
        chat_node.missing = Missing::between(lo, seq - 1);
        let missing = chat_node.missing;
        self.send(node, Address::Node(request.from), request.current, Body::Seeded { epoch, missing });
    }

    /// Replica side of `Backfill` (`backfill_at`): stored, and the missing range shrunk in the
    /// same durable write, only at the fence's epoch and at the start of the missing range;
    /// either way the answer says what is still missing.
    fn store_backfill(&mut self, node: NodeId, request: Envelope, (epoch, seq, id): (Epoch, Seq, MessageId)) {
        let chat_node = self.node_mut(node);
        if epoch < chat_node.fence {
            return;
        }
        let fits = epoch == chat_node.fence;
        if let Some(missing) = chat_node.missing.filter(|missing| fits && missing.lo == seq) {
            chat_node.log.put(seq, id);
            chat_node.missing = Missing::between(seq + 1, missing.hi);
        }
        let missing = chat_node.missing;
        self.send(node, Address::Node(request.from), request.current, Body::Backfilled { epoch, missing });
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

    /// Owner side of `Adopted`: adopt again below the first differing stamp; else seed a
    /// replica that lacks more than `INLINE_COPY` entries past its last one, or copy them
    /// inline. A missing range the replica reports is back-filled once ready.
    fn adopted(&mut self, model: &Model, node: NodeId, last: Seq, tail: Log, missing: Option<Missing>) {
        let chat_node = self.node(node);
        let Some(task) = chat_node.owner else { return };
        let Phase::Adopting { target } = task.phase else { return };
        let differs = tail.entries().find(|&(seq, id)| chat_node.log.at(seq) != id).map(|(seq, _)| seq);
        let replica = task.replica;
        self.retire_exchange(node);
        if let Some(task) = self.task_mut(node) {
            task.backfill = missing;
        }
        match (differs, replica) {
            (Some(seq), Some(replica)) => {
                let base = seq - 1;
                self.send(node, Address::Node(replica), true, Body::Adopt { epoch: task.epoch, base });
            }
            (None, Some(replica)) if model.inline_copy.is_some_and(|limit| target.saturating_sub(last) > limit) => {
                self.seed(node, replica, last, target)
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
        if let Some(replica) = room.replica.filter(|_| self.catalog.replica_in_sync) {
            if let Some(missing) = self.node(replica).missing {
                found.push(Violation::InSyncReplicaIncomplete { replica, missing });
            }
        }
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

    /// Whether some node has a missing range (the background copy is under way there).
    fn backfilling(&self) -> bool {
        self.nodes.iter().any(|node| node.missing.is_some())
    }

    /// Whether one fair schedule (everyone fetches the catalog, the owner sends its back-fill
    /// chunks, the owner's messages are delivered in order, a lost one ends in a timeout)
    /// makes the owner ready with no back-fill left. `recovering` holds states already known
    /// to get there.
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
                phase if phase.is_ready() && task.backfill.is_none() => {
                    recovering.extend(path);
                    return true;
                }
                Phase::Ready => Action::Backfill(owner),
                Phase::Dormant => Action::Send { node: owner, id: 1 },
                Phase::Fenced | Phase::Incomplete => return false,
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
            write!(f, "log {}", chat_node.log)?;
            if let Some(missing) = chat_node.missing {
                write!(f, " missing {missing}")?;
            }
            write!(f, " fence {}", chat_node.fence)?;
            if let Some(task) = chat_node.owner {
                write!(f, " owner@{} {}", task.epoch, task.phase)?;
                if task.commit > 0 {
                    write!(f, ", commit {}", task.commit)?;
                }
                if let Some(missing) = task.backfill {
                    write!(f, ", back-fill {missing}")?;
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
    /// States in which some node has a missing range (the background copy was reached).
    backfilling_states: usize,
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
        if self.backfilling_states > 0 {
            write!(f, ", {} states with a missing range", self.backfilling_states)?;
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
        backfilling_states: 0,
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
                if next.backfilling() {
                    exploration.backfilling_states += 1;
                }
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
    if model.inline_copy.is_some() && model.bounds.messages >= 2 {
        assert!(exploration.backfilling_states > 0, "the search reached the background copy");
    }
}

#[test]
fn new_rules_keep_every_acknowledged_message() {
    let model = Model { check_recovery: true, ..Model::new(Rules::NEW, Bounds::DEFAULT) };
    assert_no_violation("new_rules_keep_every_acknowledged_message", model);
}

/// docs/REPLICATION.md, "Dormant owners": an owner of a room empty on both nodes starts
/// only when a client sends to it, and every property still holds (and every all-up state
/// can still make an owner ready).
#[test]
fn new_rules_with_dormant_owners_keep_every_acknowledged_message() {
    let model = Model { check_recovery: true, dormant_owners: true, ..Model::new(Rules::NEW, Bounds::DEFAULT) };
    assert_no_violation("new_rules_with_dormant_owners_keep_every_acknowledged_message", model);
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

/// The shortest run of the new rules without `rule` that breaks one of `properties`, if any.
fn without(rule: Rule, properties: &[Property]) -> Exploration {
    let name = format!("new_rules_without_{rule:?}");
    let model = Model::new(Rules::New { without: Some(rule) }, Bounds::DEFAULT);
    run(&name, model, |v| properties.contains(&v.property()))
}

#[test]
fn new_rules_as_first_written_lose_an_acknowledged_message_to_a_late_adopt() {
    let exploration = without(Rule::AdoptSparesItsEpoch, &[Property::Durability]);
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
    let exploration = without(Rule::PromoteOnlyInSync, &[Property::Durability]);
    assert!(exploration.found.is_some(), "promoting a replica that is not in sync loses an acknowledged message");
}

#[test]
fn new_rules_with_rollback_lose_an_acknowledged_message() {
    let exploration = without(Rule::KeepTimedOutBatch, &[Property::Durability]);
    assert!(exploration.found.is_some(), "rolling a timed-out batch back loses an acknowledged message");
}

#[test]
fn new_rules_without_commit_bounded_reads_let_a_reader_see_a_replaced_message() {
    let exploration = without(Rule::ReadUpToCommit, &[Property::ReadAgreement]);
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

// --- Background copy (seed and back-fill, I9) --------------------------------------------------

/// The properties a background-copy ablation is searched for: I9 itself, and what it protects.
const BACKFILL_PROPERTIES: [Property; 2] = [Property::InSyncMeansComplete, Property::Durability];

/// Ablation (a): the owner reports the replica in sync as soon as it is ready after `Seeded`.
/// The catalog then shows a replica in sync that lacks m1 (I9). Within the bounds no
/// acknowledged message is lost through it (see the ignored test below): the promoted replica
/// refuses to start with its missing range, so the room waits instead.
#[test]
fn background_copy_reporting_in_sync_after_the_seed_breaks_i9() {
    let exploration = without(Rule::InSyncOnlyWhenComplete, &BACKFILL_PROPERTIES);
    let found = exploration.found.expect("a seeded replica is reported in sync before it holds the older log");
    assert!(matches!(found.violation, Violation::InSyncReplicaIncomplete { .. }));
}

/// Ablation (b): the missing range is not durable. The replica crashes after the seed, forgets
/// its hole, answers the owner's next `Adopt` as complete, is reported in sync and promoted
/// without m1: an acknowledged message is lost (I9 itself is not seen broken: the replica
/// no longer records a missing range).
#[test]
fn background_copy_with_a_missing_range_lost_in_a_crash_loses_an_acknowledged_message() {
    let exploration = without(Rule::DurableMissingRange, &BACKFILL_PROPERTIES);
    let found = exploration.found.expect("a replica that forgot its missing range is promoted without m1");
    assert!(matches!(found.violation, Violation::AcknowledgedMessageLost { .. }));
}

/// Ablation (c): `Adopted` does not report the missing range. An owner that starts again at
/// the same epoch takes the seeded replica for complete and reports it in sync (I9). As in
/// (a), the refusal of an owner with a missing range keeps every acknowledged message within
/// the bounds (see the ignored test below).
#[test]
fn background_copy_without_the_missing_range_in_adopted_breaks_i9() {
    let exploration = without(Rule::AdoptedReportsMissing, &BACKFILL_PROPERTIES);
    let found = exploration.found.expect("an owner starting again takes a seeded replica for complete");
    assert!(matches!(found.violation, Violation::InSyncReplicaIncomplete { .. }));
}

/// What ablation (a) costs instead of a lost message: the incomplete replica is promoted and
/// refuses to start, and the room stays unavailable with every node up.
#[test]
fn background_copy_reporting_in_sync_after_the_seed_leaves_a_room_without_an_owner() {
    let rules = Rules::New { without: Some(Rule::InSyncOnlyWhenComplete) };
    let model = Model { check_recovery: true, reads: false, ..Model::new(rules, Bounds::DEFAULT) };
    let name = "background_copy_reporting_in_sync_after_the_seed_leaves_a_room_without_an_owner";
    let exploration = run(name, model, |v| v.property() == Property::Recovery);
    let found = exploration.found.expect("the promoted incomplete replica never becomes a ready owner");
    let (_, last) = found.steps.last().expect("a run of at least one step");
    let owner = last.catalog.room.owner;
    assert!(last.node(owner).missing.is_some(), "the catalog's owner is the replica with a missing range");
}

/// Ablations (a) and (c) searched for durability alone: the space is exhausted without a
/// lost acknowledged message (an owner with a missing range refuses to start). Ignored by
/// default because each search is as long as the main one.
#[test]
#[ignore = "two searches as long as the main one; shows that ablations (a) and (c) lose no message"]
fn background_copy_ablations_a_and_c_lose_no_acknowledged_message_within_the_bounds() {
    for rule in [Rule::InSyncOnlyWhenComplete, Rule::AdoptedReportsMissing] {
        let exploration = without(rule, &[Property::Durability]);
        assert!(exploration.found.is_none() && exploration.exhausted, "without {rule:?}: no durability violation");
    }
}
