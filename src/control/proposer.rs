//! Proposing catalog commands to this member's Raft, several per log entry.
//!
//! Every write that reaches the leader (its own clients' and those forwarded by the other
//! members) waits in one queue. A proposing loop takes whatever is waiting — up to
//! [`MAX_BATCH`] commands — and proposes it as one entry: the command alone when only one
//! waits (the log then looks as it always did), else a [`Command::Batch`] that the state
//! machine applies in order, each command exactly as if it had an entry of its own. Each
//! caller gets its own command's result and the entry's index, which is all the write path
//! needs for read-your-writes. At most [`MAX_IN_FLIGHT`] entries are being committed at a
//! time, so under load the commands that arrive meanwhile gather into the next entry:
//! fewer entries, each carrying more, is what lets the control plane take thousands of
//! writes a second (docs/BENCHMARKS.md).
//!
//! On a follower the proposal fails with `NotLeader` like a single `client_write` would,
//! and the write path forwards the command to the leader.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::catalog::{Command, CommandOutput, CommandResult};
use super::raft::types::{MemberId, Raft};

/// Most commands carried by one log entry.
pub const MAX_BATCH: usize = 256;
/// Most entries being committed at once by one member's proposing loop.
pub const MAX_IN_FLIGHT: usize = 2;
/// Commands that may wait for the proposing loop before callers wait to enqueue.
const QUEUE: usize = 4_096;

/// Why this member's Raft did not take a command.
#[derive(Debug, Clone)]
pub enum LocalFailure {
    /// Not the leader; the leader's address if known.
    NotLeader(Option<String>),
    Other(String),
}

/// A command's result and the index of the log entry that carried it.
pub type Proposed = Result<(CommandResult, u64), LocalFailure>;

/// A command waiting to be proposed, and where its caller waits for the answer.
struct Waiting {
    command: Command,
    reply: oneshot::Sender<Proposed>,
}

/// The handle writers propose through; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Waiting>,
}

impl Proposer {
    /// Starts the proposing loop of this member's Raft; it stops at `shutdown` (waiting
    /// callers then get a failure).
    pub fn start(raft: Raft, member: MemberId, shutdown: watch::Receiver<bool>) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(propose_loop(raft, member, waiting, shutdown));
        Self { queue }
    }

    /// Proposes `command` (with whatever else waits) and returns its own result.
    pub async fn propose(&self, command: Command) -> Proposed {
        let (reply, answer) = oneshot::channel();
        let stopped = || LocalFailure::Other("this member is shutting down".into());
        self.queue.send(Waiting { command, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn propose_loop(
    raft: Raft,
    member: MemberId,
    mut waiting: mpsc::Receiver<Waiting>,
    mut shutdown: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // A slot first, then the commands: those that come while every slot is busy
        // gather in the queue and go together.
        let permit = tokio::select! {
            permit = in_flight.clone().acquire_owned() => permit,
            _ = crate::stopped(&mut shutdown) => return,
        };
        let Ok(permit) = permit else { return };
        let first = tokio::select! {
            first = waiting.recv() => first,
            _ = crate::stopped(&mut shutdown) => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, member, batch).await;
            drop(permit);
        });
    }
}

/// Proposes the waiting commands as one entry and answers each caller.
async fn propose_batch(raft: &Raft, member: MemberId, batch: Vec<Waiting>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Proposed>>) =
        batch.into_iter().map(|waiting| (waiting.command, waiting.reply)).unzip();
    let size = commands.len();
    metrics::histogram!("districhat_raft_commands_per_entry", "member" => member.to_string()).record(size as f64);
    let proposal = if size == 1 { commands.into_iter().next() } else { Some(Command::Batch(commands)) };
    let Some(proposal) = proposal else { return };
    let started = Instant::now();
    let answers: Vec<Proposed> = match client_write(raft, proposal).await {
        Ok((result, index)) if size == 1 => vec![Ok((result, index))],
        Ok((Ok(CommandOutput::Batch(results)), index)) if results.len() == size => {
            results.into_iter().map(|result| Ok((result, index))).collect()
        }
        Ok((other, index)) => {
            let failure = LocalFailure::Other(format!("a batch at index {index} applied as {other:?}"));
            tracing::error!(index, size, "a batched entry did not give one result per command");
            vec![Err(failure); size]
        }
        Err(failure) => vec![Err(failure); size],
    };
    metrics::histogram!("districhat_raft_commit_seconds", "member" => member.to_string())
        .record(started.elapsed().as_secs_f64());
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A caller that gave up waiting is gone; its command took effect all the same.
        let _ = reply.send(answer);
    }
}

/// One `client_write`, with openraft's errors sorted into what the write path acts on.
async fn client_write(raft: &Raft, command: Command) -> Proposed {
    match raft.client_write(command).await {
        Ok(response) => Ok((response.data, response.log_id.index)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(LocalFailure::NotLeader(forward.leader_node.map(|node| node.addr)))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(LocalFailure::Other(e.to_string())),
        Err(RaftError::Fatal(e)) => Err(LocalFailure::Other(format!("this member's raft stopped: {e}"))),
    }
}
