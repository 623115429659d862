//! What a room's owner makes of an [`Action`] before it gives it a seq: the checks
//! against its log (the target exists, is a message, is not deleted; only its author
//! edits it; its author or a moderator deletes it), the toggle of a reaction resolved to
//! "on" or "off", a reply's thread root, and the mentions recognised in a message's text
//! (docs/PROTOCOL.md, "Message events"; docs/REPLICATION.md, "Message events").

use std::collections::{HashMap, HashSet};

use super::log::events::MENTION_ROOM;
use super::owner::blocking;
use super::{Node, NodeError};
use crate::protocol::{Action, EntryKind, Outgoing, RoomId, Seq, StoredMessage, UserId};

/// Most mentions one message records.
const MAX_MENTIONS_PER_MESSAGE: usize = 20;

/// What earlier entries of the batch being sequenced did that later ones must see (the
/// log does not hold them yet).
#[derive(Default)]
pub struct BatchEvents {
    pub deleted: HashSet<Seq>,
    reactions: HashMap<(Seq, UserId, String), bool>,
}

impl BatchEvents {
    /// Records an entry of `sender`, just sequenced.
    pub fn note(&mut self, sender: UserId, kind: &EntryKind) {
        match kind {
            EntryKind::Delete { target } => {
                self.deleted.insert(*target);
            }
            EntryKind::React { target, emoji, on } => {
                self.reactions.insert((*target, sender, emoji.clone()), *on);
            }
            _ => {}
        }
    }
}

/// The entry of a plain message (no reply): its text and the mentions in it. Needs
/// nothing of the log, so an owner sequences a batch of them inside its one blocking call.
pub fn plain_entry(node: &Node, room: RoomId, outgoing: &Outgoing) -> (EntryKind, String) {
    let text = match &outgoing.action {
        Action::Message { text, .. } => text.clone(),
        _ => String::new(),
    };
    let mentions = mentions_in(&text, node.may_moderate(room, outgoing.user_id));
    (EntryKind::Message { reply_to: None, mentions }, text)
}

/// The entry kind and text the owner of `room` stores for `outgoing`, or why not.
pub async fn entry_for(
    node: &Node,
    room: RoomId,
    outgoing: &Outgoing,
    batch: &BatchEvents,
) -> Result<(EntryKind, String), NodeError> {
    let user = outgoing.user_id;
    match &outgoing.action {
        Action::Message { reply_to: None, .. } => Ok(plain_entry(node, room, outgoing)),
        Action::Message { text, reply_to: Some(parent) } => {
            let parent = live_message(node, room, *parent, batch).await?;
            // Threads are one level deep: a reply to a reply joins its thread.
            let root = match parent.kind {
                EntryKind::Message { reply_to: Some(root), .. } => root,
                _ => parent.seq,
            };
            let mentions = mentions_in(text, node.may_moderate(room, user));
            Ok((EntryKind::Message { reply_to: Some(root), mentions }, text.clone()))
        }
        Action::Edit { target, text } => {
            let message = live_message(node, room, *target, batch).await?;
            if message.sender_id != user {
                return Err(NodeError::NotAllowed("only its author may edit a message".into()));
            }
            Ok((EntryKind::Edit { target: *target }, text.clone()))
        }
        Action::Delete { target } => {
            let message = live_message(node, room, *target, batch).await?;
            if message.sender_id != user && !node.may_moderate(room, user) {
                return Err(NodeError::NotAllowed("only its author or a moderator may delete a message".into()));
            }
            Ok((EntryKind::Delete { target: *target }, String::new()))
        }
        Action::React { target, emoji } => {
            live_message(node, room, *target, batch).await?;
            let on = match batch.reactions.get(&(*target, user, emoji.clone())) {
                Some(on) => !on,
                None => {
                    let (log, target, emoji) = (node.log.clone(), *target, emoji.clone());
                    !blocking(move || log.reaction_on(room, target, user, &emoji)).await?
                }
            };
            Ok((EntryKind::React { target: *target, emoji: emoji.clone(), on }, String::new()))
        }
        Action::System { text } => Ok((EntryKind::System, text.clone())),
    }
}

/// Message `seq` of the room, if the owner's log holds it as a message not deleted.
async fn live_message(node: &Node, room: RoomId, seq: Seq, batch: &BatchEvents) -> Result<StoredMessage, NodeError> {
    if batch.deleted.contains(&seq) {
        return Err(NodeError::NoSuchMessage);
    }
    let log = node.log.clone();
    let found = blocking(move || {
        let Some(entry) = log.entry(room, seq)? else { return Ok(None) };
        let deleted = log.is_deleted(room, seq, Seq::MAX)?;
        Ok(Some((entry, deleted)))
    })
    .await?;
    match found {
        Some((entry, false)) if matches!(entry.kind, EntryKind::Message { .. }) => Ok(entry),
        _ => Err(NodeError::NoSuchMessage),
    }
}

/// The usernames `text` mentions (`@ann`), lowercased, each once, in order, at most
/// [`MAX_MENTIONS_PER_MESSAGE`]; `@room` means everyone only when `everyone` (the sender
/// moderates the room), else it is the user named "room".
pub fn mentions_in(text: &str, everyone: bool) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (at, c) in text.char_indices() {
        let starts = c == '@' && !previous.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '-');
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[at + 1..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if !(3..=32).contains(&name.len()) {
            continue;
        }
        let name = if everyone && name == "room" { MENTION_ROOM.to_string() } else { name };
        if !found.contains(&name) && found.len() < MAX_MENTIONS_PER_MESSAGE {
            found.push(name);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_words_after_an_at_sign() {
        assert_eq!(mentions_in("hi @Ann and @bob_2, mail me@example.com", false), vec!["ann", "bob_2"]);
        assert_eq!(mentions_in("@ann @ann @x @room", false), vec!["ann", "room"]);
        assert_eq!(mentions_in("@room: lunch!", true), vec!["@room"]);
        assert!(mentions_in("no one", true).is_empty());
        let many: String = (0..30).map(|i| format!("@user{i} ")).collect();
        assert_eq!(mentions_in(&many, false).len(), MAX_MENTIONS_PER_MESSAGE);
    }
}
