//! Pure accounting for the chat bench, no I/O: what one subscriber has seen of its room
//! (duplicates, out-of-order arrivals, gaps, one `client_id` stored under two seqs), which
//! acked messages subscribers never got, latency summaries, and the small decisions the
//! clients make (which node, how fast to send, which errors to retry).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::bench::control::percentile_ms;
use crate::protocol::{NodeId, RoomId, Seq};

/// Acked seqs per room: what every subscriber of the room must eventually receive.
pub type AckedSets = HashMap<RoomId, BTreeSet<Seq>>;

/// How one `message` frame relates to what the subscriber had seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next seq (or the first one after subscribing).
    Next,
    /// Newer than expected: seqs in between had not arrived (yet).
    Gap,
    /// Older than a seq already seen (or not after the subscription point).
    OutOfOrder,
    /// A seq this subscriber had already received.
    Duplicate,
}

/// Per-subscriber ordering anomalies; all zero in a correct run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OrderCounts {
    /// A seq received twice by the same subscriber.
    pub duplicated: u64,
    /// A seq lower than (or equal to) one already seen.
    pub out_of_order: u64,
    /// A jump over at least one seq that had not arrived.
    pub gaps: u64,
    /// One `client_id` delivered under two different seqs (a retried send stored twice).
    pub duplicate_ids: u64,
}

impl OrderCounts {
    pub fn add(&mut self, other: &OrderCounts) {
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.gaps += other.gaps;
        self.duplicate_ids += other.duplicate_ids;
    }
}

/// What one subscriber has seen of its room.
#[derive(Debug, Default)]
pub struct RoomTracker {
    /// The seq of the first `subscribed`: every acked message after it is owed to us.
    base: Option<Seq>,
    /// The highest seq seen, or the subscription point before any message: the ordering
    /// reference, and the `since` of a resume.
    last: Option<Seq>,
    /// Every seq received, to find duplicates and, at the end, what is missing.
    seen: HashSet<Seq>,
    /// `client_id` → the seq it was first delivered under.
    ids: HashMap<String, Seq>,
    counts: OrderCounts,
}

impl RoomTracker {
    /// A `subscribed {seq}` frame: the first one fixes where our expectations start.
    pub fn subscribed(&mut self, seq: Seq) {
        if self.base.is_none() {
            self.base = Some(seq);
        }
        if self.last.is_none() {
            self.last = Some(seq);
        }
    }

    /// The first subscription point, once subscribed.
    pub fn base(&self) -> Option<Seq> {
        self.base
    }

    /// The `since` to resume with after a reconnect (`None` before the first subscription).
    pub fn resume_from(&self) -> Option<Seq> {
        self.last
    }

    /// Records one `message` frame.
    pub fn observe(&mut self, seq: Seq, client_id: Option<&str>) -> Arrival {
        if !self.seen.insert(seq) {
            self.counts.duplicated += 1;
            return Arrival::Duplicate;
        }
        if let Some(client_id) = client_id {
            match self.ids.get(client_id) {
                Some(first) if *first != seq => self.counts.duplicate_ids += 1,
                Some(_) => {}
                None => {
                    self.ids.insert(client_id.to_string(), seq);
                }
            }
        }
        match self.last {
            Some(last) if seq <= last => {
                self.counts.out_of_order += 1;
                Arrival::OutOfOrder
            }
            Some(last) if seq > last + 1 => {
                self.counts.gaps += 1;
                self.last = Some(seq);
                Arrival::Gap
            }
            _ => {
                self.last = Some(seq);
                Arrival::Next
            }
        }
    }

    /// The acked seqs owed to this subscriber (after its subscription point) that it has
    /// not received. Before any subscription every acked seq is missing.
    pub fn missing<'a>(&'a self, acked: &'a BTreeSet<Seq>) -> impl Iterator<Item = Seq> + 'a {
        let owed = match self.base {
            Some(base) => acked.range(base.saturating_add(1)..),
            None => acked.range(..),
        };
        owed.copied().filter(|seq| !self.seen.contains(seq))
    }

    /// How many acked seqs are owed to this subscriber in total.
    pub fn owed(&self, acked: &BTreeSet<Seq>) -> usize {
        match self.base {
            Some(base) => acked.range(base.saturating_add(1)..).count(),
            None => acked.len(),
        }
    }

    pub fn counts(&self) -> OrderCounts {
        self.counts
    }
}

/// Acked messages that did not reach every subscriber.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// Distinct acked messages that at least one subscriber of their room never received.
    pub lost: u64,
    /// (subscriber, message) pairs that never arrived.
    pub missed_deliveries: u64,
    /// (subscriber, message) pairs that should have arrived.
    pub expected_deliveries: u64,
}

/// Compares what each subscriber (its room and tracker) received with the acked sets.
pub fn losses<'a>(subscribers: impl IntoIterator<Item = (RoomId, &'a RoomTracker)>, acked: &AckedSets) -> Loss {
    let empty = BTreeSet::new();
    let mut lost: HashSet<(RoomId, Seq)> = HashSet::new();
    let mut loss = Loss::default();
    for (room, tracker) in subscribers {
        let room_acked = acked.get(&room).unwrap_or(&empty);
        loss.expected_deliveries += tracker.owed(room_acked) as u64;
        for seq in tracker.missing(room_acked) {
            loss.missed_deliveries += 1;
            lost.insert((room, seq));
        }
    }
    loss.lost = lost.len() as u64;
    loss
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(mut latencies: Vec<Duration>) -> Self {
        latencies.sort_unstable();
        Self {
            samples: latencies.len(),
            p50_ms: percentile_ms(&latencies, 0.50),
            p99_ms: percentile_ms(&latencies, 0.99),
            max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// A chat node as `GET /api/token` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub ws_url: String,
}

/// The node for client `index` on its `attempt`-th connection: round-robin over the nodes
/// ordered by id (the control lists them least-loaded first, an order that changes between
/// calls), so clients spread over every node and a reconnect tries the next one.
pub fn pick_node(nodes: &[NodeInfo], index: usize, attempt: usize) -> Option<&NodeInfo> {
    let mut by_id: Vec<&NodeInfo> = nodes.iter().collect();
    by_id.sort_by_key(|node| node.id);
    let len = by_id.len();
    (len > 0).then(|| by_id[(index % len + attempt % len) % len])
}

/// Like [`pick_node`], with node `first` (when listed and not the only one) taken on the
/// first attempt and skipped on later ones: clients start on one node and, once it is
/// gone, move to the others (`bench-storm`). `None`: [`pick_node`].
pub fn pick_node_first(nodes: &[NodeInfo], first: Option<NodeId>, index: usize, attempt: usize) -> Option<&NodeInfo> {
    let Some(first) = first else { return pick_node(nodes, index, attempt) };
    let Some(pinned) = nodes.iter().find(|node| node.id == first) else { return pick_node(nodes, index, attempt) };
    let others: Vec<NodeInfo> = nodes.iter().filter(|node| node.id != first).cloned().collect();
    match (attempt, others.is_empty()) {
        (0, _) | (_, true) => Some(pinned),
        _ => pick_node(&others, index, attempt - 1).and_then(|chosen| nodes.iter().find(|node| node.id == chosen.id)),
    }
}

/// The time between two sends of one client when `rate` messages/s are spread over
/// `clients`; `None` for unlimited (a rate of 0, negative or not a number).
pub fn send_period(rate: f64, clients: usize) -> Option<Duration> {
    if !(rate.is_finite() && rate > 0.0) || clients == 0 {
        return None;
    }
    let period = Duration::try_from_secs_f64(clients as f64 / rate).unwrap_or(Duration::MAX);
    Some(period.clamp(Duration::from_micros(1), Duration::from_secs(24 * 3600)))
}

/// When client `index` of `clients` sends first: spread over one period so that clients
/// do not all send at the same instant.
pub fn send_offset(period: Duration, index: usize, clients: usize) -> Duration {
    if clients == 0 {
        return Duration::ZERO;
    }
    let fraction = (index % clients) as f64 / clients as f64;
    period.mul_f64(fraction)
}

/// Error codes after which a send is retried with the same `client_id` (the owner
/// deduplicates, so a retry never shows twice).
pub fn retryable(code: &str) -> bool {
    matches!(code, "unavailable" | "rate_limited" | "unknown_room" | "stale_epoch" | "internal")
}

/// How long to wait before retry number `attempt` (1 = the first retry) after `code`.
pub fn retry_delay(code: &str, attempt: u32) -> Duration {
    let backoff =
        Duration::from_millis(100).saturating_mul(1 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(2));
    if code == "rate_limited" {
        backoff.max(Duration::from_secs(1))
    } else {
        backoff
    }
}

/// Adds `n` to the count of `code`.
pub fn bump(counts: &mut BTreeMap<String, u64>, code: &str, n: u64) {
    *counts.entry(code.to_string()).or_default() += n;
}

/// Adds every count of `from` to `into`.
pub fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (code, n) in from {
        bump(into, code, *n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `seqs` to a tracker subscribed at `base` and returns its arrivals and counts.
    fn check(base: Seq, seqs: &[Seq]) -> (Vec<Arrival>, OrderCounts) {
        let mut tracker = RoomTracker::default();
        tracker.subscribed(base);
        let arrivals = seqs.iter().map(|seq| tracker.observe(*seq, None)).collect();
        (arrivals, tracker.counts())
    }

    #[test]
    fn in_order_delivery_has_no_anomalies() {
        use Arrival::*;
        let (arrivals, counts) = check(0, &[1, 2, 3, 4]);
        assert_eq!(arrivals, vec![Next, Next, Next, Next]);
        assert_eq!(counts, OrderCounts::default());
        let (arrivals, _) = check(41, &[42, 43]);
        assert_eq!(arrivals, vec![Next, Next], "expectations start after the subscription point");
    }

    #[test]
    fn duplicates_out_of_order_and_gaps_are_counted_separately() {
        use Arrival::*;
        let (arrivals, counts) = check(0, &[1, 2, 2, 4, 3, 4, 6, 1]);
        assert_eq!(arrivals, vec![Next, Next, Duplicate, Gap, OutOfOrder, Duplicate, Gap, Duplicate]);
        assert_eq!(counts, OrderCounts { duplicated: 3, out_of_order: 1, gaps: 2, duplicate_ids: 0 });
        let (arrivals, counts) = check(10, &[9, 12]);
        assert_eq!(arrivals, vec![OutOfOrder, Gap], "a seq at or before the subscription point is out of order");
        assert_eq!(counts.out_of_order, 1);
    }

    #[test]
    fn one_client_id_under_two_seqs_is_a_duplicate_id() {
        let mut tracker = RoomTracker::default();
        tracker.subscribed(0);
        tracker.observe(1, Some("a"));
        tracker.observe(1, Some("a"));
        tracker.observe(2, Some("b"));
        assert_eq!(tracker.counts().duplicate_ids, 0, "the same seq again is a duplicate, not a duplicate id");
        tracker.observe(3, Some("a"));
        assert_eq!(tracker.counts(), OrderCounts { duplicated: 1, out_of_order: 0, gaps: 0, duplicate_ids: 1 });
    }

    #[test]
    fn resume_point_follows_the_highest_seq_seen() {
        let mut tracker = RoomTracker::default();
        assert_eq!(tracker.resume_from(), None);
        tracker.subscribed(5);
        assert_eq!(tracker.resume_from(), Some(5));
        tracker.observe(6, None);
        tracker.observe(8, None);
        tracker.observe(7, None);
        assert_eq!(tracker.resume_from(), Some(8));
        tracker.subscribed(8);
        assert_eq!(tracker.base(), Some(5), "a resubscription does not move the expectations");
    }

    #[test]
    fn missing_counts_only_acked_seqs_after_the_subscription_point() {
        let mut tracker = RoomTracker::default();
        let acked: BTreeSet<Seq> = [1, 2, 3, 4, 5].into();
        assert_eq!(tracker.missing(&acked).count(), 5, "never subscribed: everything is missing");
        tracker.subscribed(2);
        tracker.observe(3, None);
        tracker.observe(5, None);
        assert_eq!(tracker.missing(&acked).collect::<Vec<_>>(), vec![4]);
        assert_eq!(tracker.owed(&acked), 3);
    }

    #[test]
    fn losses_count_distinct_messages_and_missed_deliveries() {
        let acked: AckedSets = [(1, [1, 2, 3].into()), (2, [1, 2].into())].into();
        let mut complete = RoomTracker::default();
        complete.subscribed(0);
        for seq in [1, 2, 3] {
            complete.observe(seq, None);
        }
        let mut missing_3 = RoomTracker::default();
        missing_3.subscribed(0);
        missing_3.observe(1, None);
        missing_3.observe(2, None);
        let mut missing_2_and_3 = RoomTracker::default();
        missing_2_and_3.subscribed(0);
        missing_2_and_3.observe(1, None);
        let mut room_2 = RoomTracker::default();
        room_2.subscribed(0);
        room_2.observe(2, None);
        let loss = losses([(1, &complete), (1, &missing_3), (1, &missing_2_and_3), (2, &room_2)], &acked);
        assert_eq!(loss, Loss { lost: 3, missed_deliveries: 4, expected_deliveries: 11 });
        let loss = losses([(3, &complete)], &acked);
        assert_eq!(loss, Loss::default(), "a room with no acked message owes nothing");
    }

    #[test]
    fn latency_summary_uses_nearest_rank_percentiles() {
        let latencies = (1..=100).rev().map(Duration::from_millis).collect();
        let summary = LatencySummary::of(latencies);
        assert_eq!(summary.samples, 100);
        assert!((summary.p50_ms - 50.0).abs() < 1e-9);
        assert!((summary.p99_ms - 99.0).abs() < 1e-9);
        assert!((summary.max_ms - 100.0).abs() < 1e-9);
        assert_eq!(LatencySummary::of(Vec::new()), LatencySummary::default());
    }

    #[test]
    fn nodes_are_picked_round_robin_by_id() {
        let nodes: Vec<NodeInfo> =
            [3, 1, 2].iter().map(|id| NodeInfo { id: *id, ws_url: format!("ws://n{id}/ws") }).collect();
        let picked: Vec<NodeId> = (0..5).filter_map(|i| pick_node(&nodes, i, 0)).map(|n| n.id).collect();
        assert_eq!(picked, vec![1, 2, 3, 1, 2]);
        assert_eq!(pick_node(&nodes, 0, 1).map(|n| n.id), Some(2), "a reconnect tries the next node");
        assert_eq!(pick_node(&nodes, usize::MAX, usize::MAX).map(|n| n.id), Some(1));
        assert_eq!(pick_node(&[], 0, 0), None);
    }

    #[test]
    fn a_first_node_takes_every_first_connection_and_no_later_one() {
        let nodes: Vec<NodeInfo> =
            [3, 1, 2].iter().map(|id| NodeInfo { id: *id, ws_url: format!("ws://n{id}/ws") }).collect();
        let first: Vec<NodeId> = (0..4).filter_map(|i| pick_node_first(&nodes, Some(2), i, 0)).map(|n| n.id).collect();
        assert_eq!(first, vec![2, 2, 2, 2]);
        let later: Vec<NodeId> = (0..4).filter_map(|i| pick_node_first(&nodes, Some(2), i, 1)).map(|n| n.id).collect();
        assert_eq!(later, vec![1, 3, 1, 3], "reconnects spread over the other nodes");
        assert_eq!(pick_node_first(&nodes, Some(9), 0, 1).map(|n| n.id), Some(2), "an unlisted node: round-robin");
        assert_eq!(pick_node_first(&nodes[..1], Some(3), 0, 5).map(|n| n.id), Some(3), "the only node");
        assert_eq!(pick_node_first(&nodes, None, 0, 0).map(|n| n.id), Some(1));
    }

    #[test]
    fn rate_is_spread_over_clients() {
        assert_eq!(send_period(0.0, 10), None);
        assert_eq!(send_period(-1.0, 10), None);
        assert_eq!(send_period(f64::NAN, 10), None);
        assert_eq!(send_period(100.0, 0), None);
        assert_eq!(send_period(100.0, 10), Some(Duration::from_millis(100)));
        assert_eq!(send_period(1e300, 10), Some(Duration::from_micros(1)));
        assert_eq!(send_period(1e-300, 10), Some(Duration::from_secs(24 * 3600)));
        assert_eq!(send_offset(Duration::from_millis(100), 5, 10), Duration::from_millis(50));
        assert_eq!(send_offset(Duration::from_millis(100), 0, 0), Duration::ZERO);
    }

    #[test]
    fn retries_back_off_and_respect_rate_limits() {
        assert!(retryable("unavailable") && retryable("rate_limited") && !retryable("text_too_long"));
        assert_eq!(retry_delay("unavailable", 1), Duration::from_millis(100));
        assert_eq!(retry_delay("unavailable", 3), Duration::from_millis(400));
        assert_eq!(retry_delay("unavailable", 60), Duration::from_secs(2));
        assert_eq!(retry_delay("rate_limited", 1), Duration::from_secs(1));
    }

    #[test]
    fn counts_merge_by_code() {
        let mut total = BTreeMap::new();
        bump(&mut total, "unavailable", 1);
        let other: BTreeMap<String, u64> = [("unavailable".to_string(), 2), ("internal".to_string(), 1)].into();
        merge_counts(&mut total, &other);
        assert_eq!(total, [("internal".to_string(), 1), ("unavailable".to_string(), 3)].into());
    }
}
