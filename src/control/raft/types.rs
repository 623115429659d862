//! The openraft type configuration of the control plane: what a log entry carries
//! (a catalog [`Command`]), what applying it returns, and how members are addressed.

use std::io::Cursor;

use openraft::BasicNode;

use crate::control::catalog::{Command, CommandResult};

/// A control member's Raft id.
pub type MemberId = u64;

openraft::declare_raft_types!(
    /// Type configuration of the control plane's Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = MemberId,
        Node = BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<MemberId>;
pub type Vote = openraft::Vote<MemberId>;
pub type StorageError = openraft::StorageError<MemberId>;
pub type StoredMembership = openraft::StoredMembership<MemberId, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<MemberId, BasicNode>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<MemberId, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<MemberId, BasicNode>;
