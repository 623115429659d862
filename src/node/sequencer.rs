//! Giving one batch of an owner's sends their seqs: a send whose `(user, client_id)`
//! holds a seq already (stored, or earlier in the same batch) is answered with that seq
//! as a duplicate; every other send becomes the next entry of the room's log. The owner
//! ([`super::owner`]) runs this for each batch, on the runtime for batches that need
//! reads of the log per send (events), or inside the batch's one blocking call for
//! batches of plain messages (docs/BENCHMARKS.md, "Levers at 2,000 sends/s").

use std::collections::HashMap;

use tokio::sync::oneshot;

use super::NodeError;
use crate::protocol::{EntryKind, Outgoing, Seq, StoredMessage, UserId};

/// A send waiting in an owner's batch.
pub struct PendingSend {
    pub message: Outgoing,
    pub reply: oneshot::Sender<Result<Sent, NodeError>>,
    /// When the send reached the owner task's queue (for the per-hop histograms).
    pub queued: std::time::Instant,
}

impl PendingSend {
    /// What makes a send a repeat of another: its sender and `client_id`.
    pub fn dedupe_key(&self) -> (UserId, String) {
        (self.message.user_id, self.message.client_id.clone())
    }
}

/// An acknowledged send.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub seq: Seq,
    pub ts: u64,
    pub duplicate: bool,
}

/// One batch being sequenced: the entries it adds and the answer each send gets once the
/// batch is committed.
pub struct Sequencer {
    /// The seq the next new entry takes.
    pub next_seq: Seq,
    ts: u64,
    in_batch: HashMap<(UserId, String), Seq>,
    pub messages: Vec<StoredMessage>,
    pub outcomes: Vec<(PendingSend, Sent)>,
}

impl Sequencer {
    pub fn new(next_seq: Seq, ts: u64) -> Self {
        Self { next_seq, ts, in_batch: HashMap::new(), messages: Vec::new(), outcomes: Vec::new() }
    }

    /// Answers `send` as a duplicate when its `(user, client_id)` holds a seq already:
    /// `stored` in the log, or given earlier in this batch. Otherwise gives it back.
    pub fn duplicate(&mut self, send: PendingSend, stored: Option<Seq>) -> Option<PendingSend> {
        match self.in_batch.get(&send.dedupe_key()).copied().or(stored) {
            Some(seq) => {
                self.outcomes.push((send, Sent { seq, ts: self.ts, duplicate: true }));
                None
            }
            None => Some(send),
        }
    }

    /// Makes `send` the next entry of the log, as `kind` with `text`.
    pub fn append(&mut self, send: PendingSend, kind: EntryKind, text: String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_batch.insert(send.dedupe_key(), seq);
        self.messages.push(StoredMessage {
            seq,
            sender_id: send.message.user_id,
            sender: send.message.username.clone(),
            text,
            ts: self.ts,
            client_id: send.message.client_id.clone(),
            kind,
        });
        self.outcomes.push((send, Sent { seq, ts: self.ts, duplicate: false }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Action;

    fn send(user_id: UserId, client_id: &str) -> PendingSend {
        let action = Action::Message { text: client_id.into(), reply_to: None };
        let message = Outgoing { user_id, username: format!("u{user_id}"), client_id: client_id.into(), action };
        PendingSend { message, reply: oneshot::channel().0, queued: std::time::Instant::now() }
    }

    fn plain() -> EntryKind {
        EntryKind::Message { reply_to: None, mentions: Vec::new() }
    }

    #[test]
    fn new_sends_take_the_next_seqs_and_repeats_get_the_seq_they_hold() {
        let mut batch = Sequencer::new(10, 7);
        for (user, client_id, stored) in [(1, "a", None), (2, "a", None), (1, "a", None), (1, "old", Some(4))] {
            if let Some(send) = batch.duplicate(send(user, client_id), stored) {
                batch.append(send, plain(), client_id.into());
            }
        }
        let seqs: Vec<Seq> = batch.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [10, 11], "one entry per new (user, client_id)");
        let answers: Vec<(Seq, bool)> = batch.outcomes.iter().map(|(_, sent)| (sent.seq, sent.duplicate)).collect();
        assert_eq!(answers, [(10, false), (11, false), (10, true), (4, true)]);
        assert_eq!(batch.next_seq, 12);
    }
}
