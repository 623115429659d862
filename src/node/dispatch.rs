//! The node's answers to its peers' mesh requests ([`Dispatch`]): sends for the rooms it
//! owns, the replica side's requests ([`replica`](super::replica)), history fetches and
//! queries (threads, mentions), and
//! the one-way deliveries, interest and typing notes.

use tracing::Instrument;

use super::mesh::Dispatch;
use super::owner::OwnerCommand;
use super::owner_handle::OwnerHandle;
use super::{Node, NodeError};
use crate::protocol::{MeshRequest, MeshResponse};

impl Dispatch for Node {
    fn handle_inline(&self, request: MeshRequest) {
        match request {
            MeshRequest::Deliver { room, frames, sequenced_ms } => self.hub.deliver(room, frames, sequenced_ms),
            MeshRequest::Interest { room, node, users } => {
                let mut owners = self.owners_lock();
                match owners.get_mut(&room) {
                    // A parked owner wakes only for a follower: it has none to forget.
                    Some(owner) if users.is_empty() => {
                        if let Some(queue) = owner.running_queue() {
                            let _ = queue.try_send(OwnerCommand::Interest { node, users });
                        }
                    }
                    Some(owner) => {
                        let _ = owner.queue(self).try_send(OwnerCommand::Interest { node, users });
                    }
                    // Our table may not have the room yet: keep it for the owner task
                    // (`early_interest`), under the owners' lock so a task starting now
                    // cannot miss it. A room our table gives to another node is the
                    // sender's stale view: nothing to keep.
                    None if self.routes().rooms.get(&room).is_none_or(|route| route.owner == Some(self.id)) => {
                        self.keep_early_interest(room, node, users)
                    }
                    None => {}
                }
            }
            MeshRequest::Typing { room, username } => {
                if let Some(queue) = self.owners_lock().get(&room).and_then(OwnerHandle::running_queue) {
                    let _ = queue.try_send(OwnerCommand::Typing { username });
                }
            }
            other => tracing::warn!(request = ?other, "a request that wants an answer came without an id"),
        }
    }

    async fn handle(&self, request: MeshRequest) -> MeshResponse {
        let result = match request {
            MeshRequest::Send { room, message } => {
                let span = tracing::info_span!("owner_send", node = self.id, room, client_id = %message.client_id, seq = tracing::field::Empty);
                let sent = self.send_local(room, message).instrument(span.clone()).await;
                sent.map(|sent| {
                    span.record("seq", sent.seq);
                    MeshResponse::Sent { seq: sent.seq, ts: sent.ts, duplicate: sent.duplicate }
                })
            }
            MeshRequest::Replicate { room, epoch, prev, committed, messages } => {
                self.store_replica(room, epoch, prev, committed, messages).await
            }
            MeshRequest::Adopt { room, epoch, base } => self.adopt(room, epoch, base).await,
            MeshRequest::Seed { room, epoch, after, message } => self.store_seed(room, epoch, after, message).await,
            MeshRequest::Backfill { room, epoch, messages } => self.store_backfill(room, epoch, messages).await,
            MeshRequest::Fetch { room, after, before, limit } => self
                .fetch_local(room, after, before, limit.min(1_000))
                .await
                .map(|(messages, has_more, last_seq)| MeshResponse::Messages { messages, has_more, last_seq }),
            MeshRequest::Query { room, query } => self
                .query_local(room, query)
                .await
                .map(|(messages, has_more, last_seq)| MeshResponse::Messages { messages, has_more, last_seq }),
            other => {
                self.handle_inline(other);
                Err(NodeError::Internal("this request takes no answer".into()))
            }
        };
        result.unwrap_or_else(NodeError::into_response)
    }
}
