//! Moderation acts and group-DM additions as the edge performs them: the catalog write
//! (checked again in [`Catalog::apply`](super::catalog::Catalog::apply)), plus what needs
//! more than the catalog — the room's newest seq from its node when a group-DM member is
//! added without the history, and the system line that tells the room what happened
//! ("alice muted bob for 10 min", posted to the room's log through
//! [`room_events`](super::room_events) once the write is applied; in the background, so
//! a slow node delays no answer, and a line that cannot be posted is logged, not an
//! error: the act itself is done). The REST API and the pages both call these, so the
//! two paths cannot drift apart.

use super::catalog::{Catalog, Command, ModAction, RoomId, UserId};
use super::history;
use super::raft::state_machine::read_state;
use super::room_events;
use super::write::WriteError;
use super::AppState;
use crate::now_ms;

/// Why an addition to a group DM failed.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The room's newest seq could not be learnt (no node holding it answered).
    #[error(transparent)]
    Unavailable(#[from] history::Unavailable),
}

/// `by` moderates `user` in `room`; returns the sentence describing the act (for a
/// flash message or a system line), e.g. `alice muted bob for 10 min`.
pub async fn act(
    app: &AppState,
    room: RoomId,
    by: UserId,
    user: UserId,
    action: ModAction,
) -> Result<String, WriteError> {
    let at_ms = now_ms();
    app.writer.write(Command::Moderate { room, by, user, action, at_ms }).await?;
    let sentence = describe(&read_state(&app.state).catalog, by, user, action, at_ms);
    tracing::info!(room, by, user, action = action.name(), "a moderation act was applied");
    let client_id = format!("moderation-{at_ms}-{by}-{user}-{}", action.name());
    system_line(app, room, by, client_id, sentence.clone());
    Ok(sentence)
}

/// Posts `text` as a system line in `room`'s log, by `by`, in the background.
fn system_line(app: &AppState, room: RoomId, by: UserId, client_id: String, text: String) {
    let Some(username) = read_state(&app.state).catalog.users.get(&by).map(|user| user.username.clone()) else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        let action = crate::protocol::Action::System { text };
        if let Err(e) = room_events::post(&app, room, (by, &username), &client_id, action).await {
            tracing::warn!(room, error = ?e, "a moderation system line was not posted");
        }
    });
}

/// A member `by` adds `user` to the group DM `room`. Without shared history, the room's
/// newest seq is asked of its node first: `user` will read only what follows it.
pub async fn add_group_member(app: &AppState, room: RoomId, by: UserId, user: UserId) -> Result<(), AddError> {
    let share_history = {
        let state = super::raft::state_machine::read_state(&app.state);
        state.catalog.group_dm(room).is_some_and(|group| group.share_history)
    };
    let last_seq = if share_history { 0 } else { history::last_seq(app, room).await? };
    let at_ms = now_ms();
    app.writer.write(Command::AddGroupMember { room, by, user, last_seq, at_ms }).await?;
    let text = {
        let catalog = &read_state(&app.state).catalog;
        let name = |id: UserId| catalog.users.get(&id).map_or_else(|| format!("user {id}"), |u| u.username.clone());
        format!("{} added {}", name(by), name(user))
    };
    system_line(app, room, by, format!("group-add-{at_ms}-{by}-{user}"), text);
    Ok(())
}

/// The sentence for one act: `alice muted bob for 10 min`, `carol banned dave`.
pub fn describe(catalog: &Catalog, by: UserId, user: UserId, action: ModAction, at_ms: u64) -> String {
    let name = |id: UserId| catalog.users.get(&id).map_or_else(|| format!("user {id}"), |u| u.username.clone());
    let (by, user) = (name(by), name(user));
    match action {
        ModAction::Mute { until_ms } => format!("{by} muted {user} for {}", duration(until_ms.saturating_sub(at_ms))),
        ModAction::Unmute => format!("{by} unmuted {user}"),
        ModAction::Kick => format!("{by} removed {user} from the room"),
        ModAction::Ban => format!("{by} banned {user}"),
        ModAction::Unban => format!("{by} lifted the ban on {user}"),
        ModAction::AddModerator => format!("{by} made {user} a moderator"),
        ModAction::RemoveModerator => format!("{by} removed {user} as moderator"),
    }
}

/// `45 s`, `10 min`, `3 h`, `2 days` (rounded up to the unit).
pub fn duration(ms: u64) -> String {
    let secs = ms.div_ceil(1_000);
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7_199 => format!("{} min", secs.div_ceil(60)),
        7_200..=172_799 => format!("{} h", secs.div_ceil(3_600)),
        _ => format!("{} days", secs.div_ceil(86_400)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(1), "1 s");
        assert_eq!(duration(600_000), "10 min");
        assert_eq!(duration(3 * 3_600_000), "3 h");
        assert_eq!(duration(30 * 86_400_000), "30 days");
    }
}
