//! Catalog writes from any member. A write goes to the local Raft if this member leads;
//! otherwise it is forwarded to the leader over `/internal/write` (bincode, cluster
//! secret; the leader's end is `control/http/forward.rs`). Across a leader change it
//! retries, bounded by [`WRITE_DEADLINE`], so a client never sees "not leader" — at worst
//! a typed `unavailable`.
//!
//! On the leader, commands that wait at the same time share one log entry
//! ([`Proposer`], `control/proposer.rs`); each still gets its own result.
//!
//! Read-your-writes: [`Writer::write`] returns only once this member's own catalog has
//! applied the write's log entry (the leader answers a forwarded write with the entry's
//! index), so a client that talks to one member always reads what it wrote there. If
//! this member cannot catch up within [`APPLY_DEADLINE`] the write is reported
//! `unavailable` although it committed; a retry with the same content meets the
//! command's own idempotence rules (`username_taken`, ...). See ARCHITECTURE.md.
//!
//! Read barriers: [`Writer::read_barrier`] waits until this member has applied everything
//! the leader had committed when asked (the leader's read index, confirmed by a heartbeat
//! round to a quorum; asked over `GET /internal/read-index` from a follower), for a read
//! that must not be stale: one that a kick or ban just revoked (room history).

use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::catalog::{CatalogError, Command, CommandOutput, CommandResult};
use super::proposer::{LocalFailure, Proposer};
use super::raft::types::{MemberId, Raft};
use super::secret::{ClusterSecret, SECRET_HEADER};
use crate::store;

/// How long a write keeps trying to find a leader before it gives up.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a member waits for its own catalog to apply a write that committed.
pub const APPLY_DEADLINE: Duration = Duration::from_secs(5);

/// Why a write did not produce a catalog result.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] CatalogError),
    #[error("the control plane has no reachable leader: {0}")]
    Unavailable(String),
    /// The write committed (at this log index) but this member did not apply it in time.
    #[error("the write committed at index {0} but this member has not applied it yet")]
    NotApplied(u64),
}

/// What `/internal/write` answers: the command's result, or why the leader could not run it.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    /// The result and the index of the log entry that carried the command.
    Applied(CommandResult, u64),
    /// The receiver is not (or no longer) the leader; the sender should look again.
    NotLeader,
    Failed(String),
}

/// What `GET /internal/read-index` answers (bincode).
#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndexReply {
    /// The leader's read index: every entry a read must see is at or below it.
    Index(u64),
    NotLeader,
    Failed(String),
}

/// Proposes catalog commands, forwarding to the leader as needed.
#[derive(Clone)]
pub struct Writer {
    pub raft: Raft,
    pub client: reqwest::Client,
    pub secret: ClusterSecret,
    /// Label for this member's metrics.
    pub member: MemberId,
    /// This member's queue of commands for its Raft, several per log entry.
    pub proposer: Proposer,
}

impl Writer {
    /// A writer for this member's `raft`, starting its proposing loop (which stops at
    /// `shutdown`).
    pub fn new(
        raft: Raft,
        client: reqwest::Client,
        secret: ClusterSecret,
        member: MemberId,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let proposer = Proposer::start(raft.clone(), member, shutdown);
        Self { raft, client, secret, member, proposer }
    }

    /// Applies `command` through Raft and returns its result.
    #[tracing::instrument(skip_all, fields(member = self.member))]
    pub async fn write(&self, command: Command) -> Result<CommandOutput, WriteError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut backoff = Duration::from_millis(20);
        loop {
            let last_error = match self.attempt(&command).await {
                Attempt::Done(result, index) => {
                    self.applied_here(index).await?;
                    return result.map_err(WriteError::Rejected);
                }
                Attempt::Retry(reason) => reason,
                Attempt::Fail(reason) => return Err(WriteError::Unavailable(reason)),
            };
            if Instant::now() + backoff > deadline {
                return Err(WriteError::Unavailable(last_error));
            }
            tracing::debug!(reason = %last_error, "write not placed yet; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Waits until this member's catalog has applied log entry `index`.
    async fn applied_here(&self, index: u64) -> Result<(), WriteError> {
        match self.raft.wait(Some(APPLY_DEADLINE)).applied_index_at_least(Some(index), "a write of ours").await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(index, error = %e, "a committed write was not applied on this member in time");
                Err(WriteError::NotApplied(index))
            }
        }
    }

    async fn attempt(&self, command: &Command) -> Attempt {
        match self.write_local(command.clone()).await {
            Ok((result, index)) => Attempt::Done(result, index),
            Err(LocalFailure::NotLeader(Some(addr))) => self.forward(&addr, command).await,
            Err(LocalFailure::NotLeader(None)) => Attempt::Retry("no leader is known yet".into()),
            Err(LocalFailure::Other(reason)) => Attempt::Fail(reason),
        }
    }

    /// Runs the command on this member's Raft (with whatever other commands wait there:
    /// [`Proposer`]), which succeeds only on the leader; returns its result and the index
    /// of its log entry.
    async fn write_local(&self, command: Command) -> Result<(CommandResult, u64), LocalFailure> {
        self.proposer.propose(command).await
    }

    /// Sends the command to the leader at `addr`. Only a connection that could not be made
    /// is retried blindly: any other failure may hide a write that did commit.
    async fn forward(&self, addr: &str, command: &Command) -> Attempt {
        let body = match store::encode(command) {
            Ok(body) => body,
            Err(e) => return Attempt::Fail(format!("cannot encode the command: {e}")),
        };
        let sent = self
            .client
            .post(format!("http://{addr}/internal/write"))
            .header(SECRET_HEADER, self.secret.expose())
            .timeout(WRITE_DEADLINE)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => return Attempt::Fail(format!("the leader at {addr} answered {}", response.status())),
            Err(e) if e.is_connect() => return Attempt::Retry(format!("leader {addr} unreachable: {e}")),
            Err(e) => return Attempt::Fail(format!("forwarding to {addr} failed: {e}")),
        };
        let reply = match response.bytes().await.map(|bytes| store::decode::<ForwardReply>(&bytes)) {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Attempt::Fail(format!("undecodable reply from {addr}: {e}")),
            Err(e) => return Attempt::Fail(format!("reading the reply from {addr} failed: {e}")),
        };
        match reply {
            ForwardReply::Applied(result, index) => Attempt::Done(result, index),
            ForwardReply::NotLeader => Attempt::Retry(format!("{addr} is no longer the leader")),
            ForwardReply::Failed(reason) => Attempt::Fail(reason),
        }
    }
}

enum Attempt {
    /// The command's result and the index of its log entry.
    Done(CommandResult, u64),
    Retry(String),
    Fail(String),
}

impl Writer {
    /// Waits until this member's catalog holds every entry committed before the call (a
    /// linearizable read point): the leader's read index, asked of the leader when this
    /// member is a follower, then this member's own apply. `unavailable` when no leader
    /// answers; bounded by [`WRITE_DEADLINE`] plus [`APPLY_DEADLINE`].
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let index = match self.read_index_local().await {
            Ok(index) => index,
            Err(LocalFailure::NotLeader(Some(addr))) => self.read_index_at(&addr).await?,
            Err(LocalFailure::NotLeader(None)) => return Err(WriteError::Unavailable("no leader is known".into())),
            Err(LocalFailure::Other(reason)) => return Err(WriteError::Unavailable(reason)),
        };
        self.applied_here(index).await
    }

    /// The read index when this member leads (confirmed by a quorum's heartbeat answers).
    async fn read_index_local(&self) -> Result<u64, LocalFailure> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |log_id| log_id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(LocalFailure::NotLeader(forward.leader_node.map(|node| node.addr)))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => Err(LocalFailure::Other(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(LocalFailure::Other(format!("this member's raft stopped: {e}"))),
        }
    }

    /// Asks the leader at `addr` for its read index.
    async fn read_index_at(&self, addr: &str) -> Result<u64, WriteError> {
        let sent = self
            .client
            .get(format!("http://{addr}/internal/read-index"))
            .header(SECRET_HEADER, self.secret.expose())
            .timeout(WRITE_DEADLINE)
            .send()
            .await;
        let response = match sent {
            Ok(response) if response.status().is_success() => response,
            Ok(response) => {
                return Err(WriteError::Unavailable(format!("the leader at {addr} answered {}", response.status())))
            }
            Err(e) => return Err(WriteError::Unavailable(format!("asking {addr} for a read index failed: {e}"))),
        };
        let bytes = response.bytes().await.map_err(|e| WriteError::Unavailable(e.to_string()))?;
        match store::decode::<ReadIndexReply>(&bytes) {
            Ok(ReadIndexReply::Index(index)) => Ok(index),
            Ok(ReadIndexReply::NotLeader) => Err(WriteError::Unavailable(format!("{addr} is no longer the leader"))),
            Ok(ReadIndexReply::Failed(reason)) => Err(WriteError::Unavailable(reason)),
            Err(e) => Err(WriteError::Unavailable(format!("undecodable read index from {addr}: {e}"))),
        }
    }

    /// The leader's side of `GET /internal/read-index` (`control/http/forward.rs`).
    pub async fn serve_read_index(&self) -> ReadIndexReply {
        match self.read_index_local().await {
            Ok(index) => ReadIndexReply::Index(index),
            Err(LocalFailure::NotLeader(_)) => ReadIndexReply::NotLeader,
            Err(LocalFailure::Other(reason)) => ReadIndexReply::Failed(reason),
        }
    }

    /// The leader's side of a forwarded write (`POST /internal/write`,
    /// `control/http/forward.rs`): runs `command` on this member's Raft if it leads.
    pub async fn serve_forwarded(&self, command: Command) -> ForwardReply {
        match self.write_local(command).await {
            Ok((result, index)) => ForwardReply::Applied(result, index),
            Err(LocalFailure::NotLeader(_)) => ForwardReply::NotLeader,
            Err(LocalFailure::Other(reason)) => ForwardReply::Failed(reason),
        }
    }
}
