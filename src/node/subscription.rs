//! The order of one room's messages on one browser connection: what a session writes,
//! holds back or fetches when a live frame, a catch-up page or a failed fetch arrives.
//! The promise it keeps (docs/PROTOCOL.md, "Messages"): each message is written once, in
//! seq order, with no holes, whatever order live frames and pages come in. Pure and
//! generic over the frame, so the `subscription_order` fuzz target drives it with seqs
//! alone (`crate::fuzzing`); the session (`session.rs`) does the fetching and writing.

use std::time::Duration;

use crate::protocol::Seq;

/// How long to wait before fetching a gap again that the last catch-up did not fill (the
/// copy it read from was behind the live frames).
pub const GAP_RETRY: Duration = Duration::from_millis(100);

/// One room followed by one connection.
pub struct Subscription<F> {
    /// Highest seq written to the browser.
    last: Seq,
    /// While catching up: live frames held back until the catch-up is written.
    held: Option<Vec<(Seq, F)>>,
    /// Live frames were dropped while catching up (past the connection's cap): fetch them
    /// from the log once this catch-up is written.
    overflowed: bool,
}

/// What the session does after a catch-up page.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterPage {
    /// Fetch the messages after `after`, after `delay`.
    Fetch { after: Seq, delay: Duration },
    /// The catch-up is done: say `subscribed` at this seq.
    Subscribed(Seq),
}

impl<F: Clone> Subscription<F> {
    /// A subscription that has written nothing yet.
    pub fn new() -> Self {
        Self { last: 0, held: None, overflowed: false }
    }

    /// Starts a catch-up for a `subscribe` (again): from `since` when given, else from the
    /// room's last seq. Returns what to fetch after (`None`: only the room's last seq).
    /// Subscribing again never goes back before what this connection was already written:
    /// a client that re-subscribes after an `error` may not have read the messages the
    /// node's own retry wrote meanwhile, and would get them twice (a reconnect storm
    /// showed it: `bench-storm`, docs/BENCHMARKS.md).
    /// Nothing at or below `floor` (a group-DM member's history floor) is ever fetched or
    /// written, with or without `since`.
    pub fn subscribe(&mut self, since: Option<Seq>, floor: Seq) -> Option<Seq> {
        self.last = since.map_or(self.last, |since| since.max(self.last)).max(floor);
        self.held = Some(Vec::new());
        since.map(|_| self.last)
    }

    /// Starts a catch-up after the last written seq unless one is under way (the room's
    /// owner changed: messages may have been missed). Returns what to fetch after.
    pub fn resync(&mut self) -> Option<Seq> {
        if self.held.is_some() {
            return None;
        }
        self.held = Some(Vec::new());
        Some(self.last)
    }

    /// Whether a catch-up is under way (live frames are held back meanwhile).
    pub fn catching_up(&self) -> bool {
        self.held.is_some()
    }

    /// Live frames held back now.
    pub fn held(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// A live frame (`seq` 0: ephemeral, written as it is). `may_hold`: the connection
    /// has room to hold one more. Returns the frames to write and, on a gap, what to
    /// fetch after.
    pub fn live(&mut self, seq: Seq, frame: F, may_hold: bool) -> (Vec<F>, Option<Seq>) {
        if let Some(held) = &mut self.held {
            if seq > 0 && may_hold {
                held.push((seq, frame));
            } else if seq > 0 {
                self.overflowed = true;
            }
            return (Vec::new(), None);
        }
        if seq == 0 {
            return (vec![frame], None);
        }
        if seq <= self.last {
            return (Vec::new(), None);
        }
        if seq > self.last + 1 {
            // A gap: hold this frame and fetch what is missing first.
            self.held = Some(vec![(seq, frame)]);
            return (Vec::new(), Some(self.last));
        }
        self.last = seq;
        (vec![frame], None)
    }

    /// One catch-up page (ascending), `has_more` after it, and the room's readable end
    /// when it was read. Returns the frames to write and what comes next; live frames it
    /// could not hold, or that follow a gap the page did not fill, are fetched again.
    pub fn page(&mut self, messages: Vec<(Seq, F)>, has_more: bool, last_seq: Seq) -> (Vec<F>, AfterPage) {
        let more = has_more && !messages.is_empty();
        let mut out = Vec::new();
        for (seq, frame) in messages {
            if seq > self.last {
                self.last = seq;
                out.push(frame);
            }
        }
        if more {
            return (out, AfterPage::Fetch { after: self.last, delay: Duration::ZERO });
        }
        // Without `since` only the last seq was fetched: live messages start after it.
        self.last = self.last.max(last_seq);
        let mut held = self.held.take().unwrap_or_default();
        out.extend(self.release(&mut held));
        if std::mem::take(&mut self.overflowed) || !held.is_empty() {
            let delay = if held.is_empty() { Duration::ZERO } else { GAP_RETRY };
            self.held = Some(held);
            return (out, AfterPage::Fetch { after: self.last, delay });
        }
        (out, AfterPage::Subscribed(self.last))
    }

    /// A catch-up fetch failed: stay subscribed and write the held frames that follow on
    /// (the next owner change or gap fetches again).
    pub fn page_failed(&mut self) -> Vec<F> {
        let mut held = self.held.take().unwrap_or_default();
        self.overflowed = false;
        self.release(&mut held)
    }

    /// Writes held live frames that follow on from `last`, in seq order, once each; the
    /// ones past a gap stay in `held`, the ones already written go.
    fn release(&mut self, held: &mut Vec<(Seq, F)>) -> Vec<F> {
        held.sort_by_key(|(seq, _)| *seq);
        let mut out = Vec::new();
        held.retain(|(seq, frame)| {
            if *seq == self.last + 1 {
                self.last = *seq;
                out.push(frame.clone());
            }
            *seq > self.last
        });
        out
    }
}

impl<F: Clone> Default for Subscription<F> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(range: std::ops::RangeInclusive<Seq>) -> Vec<(Seq, Seq)> {
        range.map(|seq| (seq, seq)).collect()
    }

    #[test]
    fn a_gap_in_live_frames_is_fetched_and_the_held_frame_follows_it() {
        let mut subscription = Subscription::new();
        assert_eq!(subscription.subscribe(Some(3), 0), Some(3));
        assert_eq!(subscription.page(Vec::new(), false, 3), (vec![], AfterPage::Subscribed(3)));
        assert_eq!(subscription.live(4, 4, true), (vec![4], None));
        assert_eq!(subscription.live(6, 6, true), (vec![], Some(4)), "5 was lost: fetch after 4");
        assert_eq!(subscription.live(7, 7, true), (vec![], None), "held while fetching");
        assert_eq!(subscription.page(page(5..=5), false, 5), (vec![5, 6, 7], AfterPage::Subscribed(7)));
        assert_eq!(subscription.live(7, 7, true), (vec![], None), "never twice");
    }

    #[test]
    fn a_page_from_a_copy_behind_the_live_frames_is_fetched_again_after_a_pause() {
        let mut subscription = Subscription::new();
        subscription.subscribe(Some(0), 0);
        subscription.live(5, 5, true);
        let (out, next) = subscription.page(page(1..=3), false, 3);
        assert_eq!(out, vec![1, 2, 3]);
        assert_eq!(next, AfterPage::Fetch { after: 3, delay: GAP_RETRY }, "4 is missing, 5 waits");
        assert_eq!(subscription.page(page(4..=5), false, 5), (vec![4, 5], AfterPage::Subscribed(5)));
    }

    #[test]
    fn subscribing_again_with_an_older_since_writes_nothing_twice() {
        let mut subscription = Subscription::new();
        subscription.subscribe(Some(2), 0);
        assert_eq!(subscription.page(page(3..=5), false, 5), (vec![3, 4, 5], AfterPage::Subscribed(5)));
        assert_eq!(subscription.subscribe(Some(2), 0), Some(5), "the client had not read 3..5 yet");
        assert_eq!(subscription.page(page(6..=6), false, 6), (vec![6], AfterPage::Subscribed(6)));
        assert_eq!(subscription.subscribe(Some(7), 0), Some(7), "a newer since is taken as it is");
    }

    #[test]
    fn a_held_newest_frame_ends_a_catch_up_from_a_copy_one_batch_behind() {
        // The node was delivered 2 before this session joined; the replica's page ends at 1.
        let mut subscription = Subscription::new();
        subscription.subscribe(Some(0), 0);
        subscription.live(2, 2, true);
        assert_eq!(subscription.page(page(1..=1), false, 1), (vec![1, 2], AfterPage::Subscribed(2)));
        // A last batch of two (3 and 4) behind a copy that knows 2: fetched again until the
        // copy knows 4, each message once.
        let mut subscription = Subscription::new();
        subscription.subscribe(Some(0), 0);
        subscription.live(4, 4, true);
        let (out, next) = subscription.page(page(1..=2), false, 2);
        assert_eq!((out, next), (vec![1, 2], AfterPage::Fetch { after: 2, delay: GAP_RETRY }));
        assert_eq!(subscription.page(page(3..=4), false, 4), (vec![3, 4], AfterPage::Subscribed(4)));
        // A held frame the page already covers is not written twice.
        let mut subscription = Subscription::new();
        subscription.subscribe(Some(0), 0);
        subscription.live(2, 2, true);
        assert_eq!(subscription.page(page(1..=3), false, 3), (vec![1, 2, 3], AfterPage::Subscribed(3)));
    }

    #[test]
    fn without_since_a_gap_below_the_history_floor_is_never_fetched() {
        // A member added at seq 5 without history subscribes without `since`; the node's
        // newest frame (9) is held, and a replica one batch behind answers last seq 0.
        let mut subscription = Subscription::new();
        assert_eq!(subscription.subscribe(None, 5), None, "only the room's last seq");
        subscription.live(9, 9, true);
        let (out, next) = subscription.page(Vec::new(), false, 0);
        assert_eq!((out, next), (vec![], AfterPage::Fetch { after: 5, delay: GAP_RETRY }), "never after 0");
        assert_eq!(subscription.page(page(6..=9), false, 9), (vec![6, 7, 8, 9], AfterPage::Subscribed(9)));
    }

    #[test]
    fn frames_past_the_hold_cap_are_fetched_instead_of_dropped() {
        let mut subscription = Subscription::new();
        subscription.subscribe(Some(0), 0);
        subscription.live(3, 3, false);
        assert_eq!(subscription.held(), 0);
        let (out, next) = subscription.page(page(1..=2), false, 2);
        assert_eq!((out, next), (vec![1, 2], AfterPage::Fetch { after: 2, delay: Duration::ZERO }));
        assert_eq!(subscription.page(page(3..=3), false, 3), (vec![3], AfterPage::Subscribed(3)));
    }
}
