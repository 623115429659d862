//! Room moderation and group DMs inside [`Catalog::apply`]: who may moderate a room, the
//! acts ([`ModAction`]: mute, kick, ban and their undoing, naming moderators), the per-room
//! audit list, and the group-DM commands (create, add a member with or without history).
//!
//! Roles, checked here on every member so no path (REST, pages, a forwarded write) can
//! skip them:
//! - the room's **owner** is its creator; they name and remove moderators;
//! - **moderators** (named by the owner) mute, kick, ban, unmute and unban members;
//! - the cluster **admin** ([`ADMIN_USER`], the first account) does all of it in every room.
//!
//! A moderator cannot act on the owner, an admin, another moderator (only the owner or an
//! admin can) or themselves: `protected_user`. In a 1:1 DM only an admin moderates, and
//! nobody is kicked from it (its two members are fixed); a group DM is moderated by its
//! creator like any room. Kick removes the membership (public room: they may join again;
//! private room or group DM: a member may add them again); ban removes it too and refuses
//! every later join or add (`banned`) until an unban. A ban in a 1:1 DM keeps the
//! membership (the DM's two members are fixed) but every path refuses the banned user.
//!
//! Every accepted act appends an [`AuditEntry`] to its room's list; the newest
//! [`AUDIT_KEEP`] per room are kept. Expired mutes are forgotten when the room sees its
//! next act. Everything here is deterministic: times come inside the command.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError, CommandOutput, CommandResult, Room, RoomId, Touched, UserId};

/// The cluster administrator: the first account ever registered. Moderates every room.
pub const ADMIN_USER: UserId = 1;
/// Audit entries kept per room (the newest).
pub const AUDIT_KEEP: u64 = 1_000;
/// A group DM has this many members at least (the creator included)...
pub const GROUP_DM_MIN: usize = 3;
/// ...and at most this many.
pub const GROUP_DM_MAX: usize = 20;
/// The longest mute: 30 days.
pub const MAX_MUTE_MS: u64 = 30 * 24 * 3_600_000;
/// Room names of group DMs: `dm-g{room id}` (the `dm-` prefix is reserved, and 1:1 DMs are
/// `dm-{digits}-{digits}`, so the names never meet).
pub const GROUP_DM_PREFIX: &str = "dm-g";

/// A room's moderation state and group-DM settings; absent for a room nobody moderated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPolicy {
    /// Moderators named by the owner (the owner is one without being listed).
    pub moderators: BTreeSet<UserId>,
    /// Banned users: refused on every path with `banned`, and cannot (re)join.
    pub banned: BTreeSet<UserId>,
    /// Muted users and until when (ms since the Unix epoch); sends are refused with
    /// `muted` until then. Expired entries linger until the room's next act.
    pub muted: BTreeMap<UserId, u64>,
    /// Group-DM members added without the history: they read only messages with a seq
    /// above this one (the room's last seq when they were added).
    pub history_from: BTreeMap<UserId, u64>,
    /// Set for a group DM.
    pub group: Option<GroupDm>,
    /// Audit entries ever appended: the next entry's number (entries below
    /// `audit_count - AUDIT_KEEP` are dropped).
    pub audit_count: u64,
}

/// What the creator of a group DM chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDm {
    /// An optional name shown beside the members' names.
    pub title: Option<String>,
    /// Whether a member added later reads the messages from before they were added.
    pub share_history: bool,
}

/// One moderation act. Appended variants only: the index travels in bincode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModAction {
    /// Sends refused with `muted` until `until_ms` (replaces an earlier mute).
    Mute {
        until_ms: u64,
    },
    Unmute,
    /// The membership is removed (and a moderator role with it).
    Kick,
    /// Kick, and no (re)join until an unban.
    Ban,
    Unban,
    /// Owner or admin only.
    AddModerator,
    /// Owner or admin only.
    RemoveModerator,
}

impl ModAction {
    /// The act named `name`, for every act but `mute` (which needs an end the caller
    /// reads in its own unit); `None` for `mute` and unknown names.
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "unmute" => Self::Unmute,
            "kick" => Self::Kick,
            "ban" => Self::Ban,
            "unban" => Self::Unban,
            "add_moderator" => Self::AddModerator,
            "remove_moderator" => Self::RemoveModerator,
            _ => return None,
        })
    }

    /// The stable name of the act (the audit view's `action`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mute { .. } => "mute",
            Self::Unmute => "unmute",
            Self::Kick => "kick",
            Self::Ban => "ban",
            Self::Unban => "unban",
            Self::AddModerator => "add_moderator",
            Self::RemoveModerator => "remove_moderator",
        }
    }
}

/// One line of a room's audit list: who did what to whom, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: u64,
    pub by: UserId,
    pub user: UserId,
    pub action: ModAction,
}

impl Room {
    /// Whether this room is a group DM (private, 3 to 20 members, named `dm-g{id}`).
    pub fn is_group_dm(&self) -> bool {
        self.private && self.name.starts_with(GROUP_DM_PREFIX)
    }
}

impl Catalog {
    /// Whether `user` may moderate `room`: the admin always; in any room but a 1:1 DM its
    /// owner (creator) and the moderators it named.
    pub fn may_moderate(&self, room: &Room, user: UserId) -> bool {
        self.is_admin(user) || self.moderates(room, user)
    }

    /// Whether `user` holds a moderating role in `room` (not counting the admin's): its
    /// owner or a named moderator, still a member and not banned, in any room but a 1:1 DM.
    fn moderates(&self, room: &Room, user: UserId) -> bool {
        let named =
            room.created_by == user || self.policies.get(&room.id).is_some_and(|p| p.moderators.contains(&user));
        named && !room.is_dm() && self.is_member(room.id, user) && !self.is_banned(room.id, user)
    }

    /// Whether `user` is the cluster admin (and exists).
    pub fn is_admin(&self, user: UserId) -> bool {
        user == ADMIN_USER && self.users.contains_key(&ADMIN_USER)
    }

    /// Whether `user` is banned from `room`.
    pub fn is_banned(&self, room: RoomId, user: UserId) -> bool {
        self.policies.get(&room).is_some_and(|policy| policy.banned.contains(&user))
    }

    /// Until when `user` is muted in `room`, if that is after `now_ms`.
    pub fn muted_until(&self, room: RoomId, user: UserId, now_ms: u64) -> Option<u64> {
        self.policies.get(&room)?.muted.get(&user).copied().filter(|until| *until > now_ms)
    }

    /// The seq above which `user` may read `room` (0: all of it).
    pub fn history_from(&self, room: RoomId, user: UserId) -> u64 {
        self.policies.get(&room).and_then(|policy| policy.history_from.get(&user)).copied().unwrap_or(0)
    }

    /// Who holds a moderating role in the room: its owner, then the named moderators (as
    /// long as each is a member and not banned; 1:1 DMs: none; the admin is not listed).
    pub fn room_moderators(&self, room: &Room) -> Vec<UserId> {
        let named = self.policies.get(&room.id).into_iter().flat_map(|policy| policy.moderators.iter().copied());
        std::iter::once(room.created_by)
            .chain(named.filter(|user| *user != room.created_by))
            .filter(|user| self.moderates(room, *user))
            .collect()
    }

    /// The room's kept audit entries, oldest first.
    pub fn room_audit(&self, room: RoomId) -> impl Iterator<Item = &AuditEntry> + '_ {
        self.audit.range((room, 0)..=(room, u64::MAX)).map(|(_, entry)| entry)
    }

    /// The group-DM settings of `room`, when it is one.
    pub fn group_dm(&self, room: RoomId) -> Option<&GroupDm> {
        self.policies.get(&room)?.group.as_ref()
    }

    pub(super) fn moderate(
        &mut self,
        room_id: RoomId,
        by: UserId,
        user: UserId,
        action: ModAction,
        at_ms: u64,
        touched: &mut Vec<Touched>,
    ) -> CommandResult {
        let room = self.rooms.get(&room_id).ok_or(CatalogError::UnknownRoom(room_id))?.clone();
        for who in [by, user] {
            if !self.users.contains_key(&who) {
                return Err(CatalogError::UnknownUser(who));
            }
        }
        if room.is_dm() && !self.is_admin(by) {
            return Err(CatalogError::DmNotModerated);
        }
        if !self.may_moderate(&room, by) {
            return Err(CatalogError::NotModerator { room: room_id });
        }
        let admin = self.is_admin(by);
        let owner_or_admin = admin || room.created_by == by;
        if matches!(action, ModAction::AddModerator | ModAction::RemoveModerator) && !owner_or_admin {
            return Err(CatalogError::NotRoomOwner { room: room_id });
        }
        let target_moderates = self.policies.get(&room_id).is_some_and(|p| p.moderators.contains(&user));
        let protected = user == by
            || self.is_admin(user)
            || (user == room.created_by && !admin)
            || (target_moderates && !owner_or_admin);
        if protected {
            return Err(CatalogError::ProtectedUser);
        }
        let member = self.is_member(room_id, user);
        match action {
            ModAction::Mute { until_ms } if until_ms <= at_ms || until_ms - at_ms > MAX_MUTE_MS => {
                return Err(CatalogError::InvalidMute);
            }
            ModAction::Kick if room.is_dm() => return Err(CatalogError::DmMembersFixed),
            ModAction::Kick | ModAction::AddModerator if !member => {
                return Err(CatalogError::NotAMember { room: room_id, user });
            }
            ModAction::AddModerator if room.is_dm() => return Err(CatalogError::DmNotModerated),
            _ => {}
        }

        let policy = self.policies.entry(room_id).or_default();
        policy.muted.retain(|_, until| *until > at_ms);
        let mut leaves = false;
        match action {
            ModAction::Mute { until_ms } => {
                policy.muted.insert(user, until_ms);
            }
            ModAction::Unmute => {
                policy.muted.remove(&user);
            }
            ModAction::Kick => {
                policy.moderators.remove(&user);
                leaves = true;
            }
            ModAction::Ban => {
                policy.moderators.remove(&user);
                policy.banned.insert(user);
                // A 1:1 DM keeps its two members; the ban alone shuts the user out.
                leaves = !room.is_dm();
            }
            ModAction::Unban => {
                policy.banned.remove(&user);
            }
            ModAction::AddModerator => {
                policy.moderators.insert(user);
            }
            ModAction::RemoveModerator => {
                policy.moderators.remove(&user);
            }
        }
        if leaves && self.members.remove(&(room_id, user)) {
            touched.push(Touched::Member(room_id, user));
        }
        touched.push(Touched::Policy(room_id));
        self.append_audit(room_id, AuditEntry { at_ms, by, user, action }, touched);
        Ok(CommandOutput::Done)
    }

    /// Appends `entry` to the room's audit list and drops the entry that falls out of it.
    fn append_audit(&mut self, room: RoomId, entry: AuditEntry, touched: &mut Vec<Touched>) {
        let policy = self.policies.entry(room).or_default();
        let number = policy.audit_count;
        policy.audit_count += 1;
        self.audit.insert((room, number), entry);
        touched.push(Touched::Audit(room, number));
        if let Some(dropped) = number.checked_sub(AUDIT_KEEP) {
            self.audit.remove(&(room, dropped));
            touched.push(Touched::Audit(room, dropped));
        }
    }

    pub(super) fn create_group_dm(
        &mut self,
        created_by: UserId,
        members: Vec<UserId>,
        title: Option<String>,
        share_history: bool,
        at_ms: u64,
        touched: &mut Vec<Touched>,
    ) -> CommandResult {
        if !self.users.contains_key(&created_by) {
            return Err(CatalogError::UnknownUser(created_by));
        }
        let mut seen = BTreeSet::from([created_by]);
        for user in &members {
            if !self.users.contains_key(user) {
                return Err(CatalogError::UnknownUser(*user));
            }
            if !seen.insert(*user) {
                return Err(CatalogError::DuplicateMember(*user));
            }
        }
        match seen.len() {
            1 => return Err(CatalogError::DmWithSelf),
            n if n < GROUP_DM_MIN => return Err(CatalogError::GroupDmTooSmall),
            n if n > GROUP_DM_MAX => return Err(CatalogError::GroupDmTooLarge),
            _ => {}
        }
        let title = match title.map(|title| title.trim().to_string()) {
            Some(title) if title.is_empty() => None,
            Some(title) if title.chars().count() > 64 || title.chars().any(char::is_control) => {
                return Err(CatalogError::InvalidGroupName);
            }
            other => other,
        };
        let name = format!("{GROUP_DM_PREFIX}{}", self.meta.next_room_id + 1);
        if self.room_names.contains_key(&name) {
            return Err(CatalogError::RoomExists(name));
        }
        let room = self.insert_room(name, true, created_by, at_ms, touched);
        for user in members {
            self.members.insert((room.id, user));
            touched.push(Touched::Member(room.id, user));
        }
        let policy = RoomPolicy { group: Some(GroupDm { title, share_history }), ..RoomPolicy::default() };
        self.policies.insert(room.id, policy);
        touched.push(Touched::Policy(room.id));
        Ok(CommandOutput::Room(room))
    }

    /// A member `by` adds `user` to a group DM whose last seq was `last_seq` (asked of the
    /// room's node just before): without shared history, `user` reads only what follows.
    pub(super) fn add_group_member(
        &mut self,
        room: RoomId,
        by: UserId,
        user: UserId,
        last_seq: u64,
        touched: &mut Vec<Touched>,
    ) -> CommandResult {
        let entry = self.rooms.get(&room).ok_or(CatalogError::UnknownRoom(room))?;
        let share_history = match self.group_dm(room) {
            Some(group) if entry.is_group_dm() => group.share_history,
            _ => return Err(CatalogError::NotGroupDm { room }),
        };
        if !self.users.contains_key(&user) {
            return Err(CatalogError::UnknownUser(user));
        }
        if !self.is_member(room, by) {
            return Err(CatalogError::NotAMember { room, user: by });
        }
        if self.is_banned(room, user) {
            return Err(CatalogError::Banned { room });
        }
        if self.is_member(room, user) {
            return Ok(CommandOutput::Done);
        }
        if self.room_members(room).count() >= GROUP_DM_MAX {
            return Err(CatalogError::GroupDmFull);
        }
        self.members.insert((room, user));
        touched.push(Touched::Member(room, user));
        let policy = self.policies.entry(room).or_default();
        if share_history {
            policy.history_from.remove(&user);
        } else {
            policy.history_from.insert(user, last_seq);
        }
        touched.push(Touched::Policy(room));
        Ok(CommandOutput::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::*;

    const ALICE: UserId = 1; // the admin
    const BOB: UserId = 2; // the room's owner
    const CAROL: UserId = 3;
    const DAVE: UserId = 4;
    const ERIN: UserId = 5;

    /// Five users; bob owns the public room 1 and the private room 2; carol and dave are
    /// members of both.
    fn setup() -> Catalog {
        let mut catalog = Catalog::default();
        for name in ["alice", "bob", "carol", "dave", "erin"] {
            let command = Command::CreateUser { username: name.into(), password_hash: "h".into(), at_ms: 1 };
            catalog.apply(command).0.expect("user");
        }
        for (name, private) in [("lobby", false), ("inner", true)] {
            let command = Command::CreateRoom { name: name.into(), private, created_by: BOB, at_ms: 1 };
            catalog.apply(command).0.expect("room");
        }
        for room in [1, 2] {
            for user in [CAROL, DAVE] {
                catalog.apply(Command::AddMember { room, user }).0.expect("member");
            }
        }
        catalog
    }

    fn act(catalog: &mut Catalog, room: RoomId, by: UserId, user: UserId, action: ModAction) -> CommandResult {
        catalog.apply(Command::Moderate { room, by, user, action, at_ms: 1_000 }).0
    }

    fn code(result: CommandResult) -> &'static str {
        result.err().map_or("ok", |e| e.code())
    }

    #[test]
    fn only_the_owner_or_an_admin_names_moderators() {
        let mut catalog = setup();
        assert_eq!(code(act(&mut catalog, 1, CAROL, DAVE, ModAction::AddModerator)), "forbidden");
        assert_eq!(code(act(&mut catalog, 1, BOB, CAROL, ModAction::AddModerator)), "ok");
        assert_eq!(catalog.room_moderators(&catalog.rooms[&1].clone()), vec![BOB, CAROL]);
        assert_eq!(code(act(&mut catalog, 1, CAROL, DAVE, ModAction::AddModerator)), "forbidden", "not the owner");
        assert_eq!(code(act(&mut catalog, 1, BOB, ERIN, ModAction::AddModerator)), "not_a_member");
        assert_eq!(code(act(&mut catalog, 1, ALICE, DAVE, ModAction::AddModerator)), "ok", "the admin may");
        assert_eq!(code(act(&mut catalog, 1, BOB, DAVE, ModAction::RemoveModerator)), "ok");
        assert!(!catalog.may_moderate(&catalog.rooms[&1].clone(), DAVE));
        assert!(catalog.may_moderate(&catalog.rooms[&2].clone(), ALICE), "the admin moderates every room");
    }

    #[test]
    fn mute_kick_ban_and_their_undoing() {
        let mut catalog = setup();
        act(&mut catalog, 1, BOB, CAROL, ModAction::AddModerator).expect("named");
        assert_eq!(code(act(&mut catalog, 1, DAVE, CAROL, ModAction::Kick)), "forbidden", "members do not moderate");
        assert_eq!(code(act(&mut catalog, 1, CAROL, BOB, ModAction::Ban)), "protected_user", "not the owner");
        assert_eq!(code(act(&mut catalog, 1, CAROL, ALICE, ModAction::Ban)), "protected_user", "not an admin");
        assert_eq!(code(act(&mut catalog, 1, CAROL, CAROL, ModAction::Kick)), "protected_user", "not oneself");
        assert_eq!(code(act(&mut catalog, 1, CAROL, DAVE, ModAction::Mute { until_ms: 1_000 })), "invalid_mute");

        act(&mut catalog, 1, CAROL, DAVE, ModAction::Mute { until_ms: 5_000 }).expect("muted");
        assert_eq!(catalog.muted_until(1, DAVE, 1_000), Some(5_000));
        assert_eq!(catalog.muted_until(1, DAVE, 5_000), None, "a mute ends by itself");
        act(&mut catalog, 1, CAROL, DAVE, ModAction::Unmute).expect("unmuted");
        assert_eq!(catalog.muted_until(1, DAVE, 1_000), None);

        act(&mut catalog, 2, BOB, DAVE, ModAction::Kick).expect("kicked");
        assert!(!catalog.is_member(2, DAVE));
        assert_eq!(code(act(&mut catalog, 2, BOB, DAVE, ModAction::Kick)), "not_a_member");
        catalog.apply(Command::AddMember { room: 2, user: DAVE }).0.expect("a kicked user may be added again");

        act(&mut catalog, 1, CAROL, DAVE, ModAction::Ban).expect("banned");
        assert!(catalog.is_banned(1, DAVE) && !catalog.is_member(1, DAVE));
        assert_eq!(code(catalog.apply(Command::AddMember { room: 1, user: DAVE }).0), "banned");
        act(&mut catalog, 1, CAROL, DAVE, ModAction::Unban).expect("unbanned");
        catalog.apply(Command::AddMember { room: 1, user: DAVE }).0.expect("joins again");

        act(&mut catalog, 1, BOB, CAROL, ModAction::Ban).expect("the owner bans a moderator");
        assert!(!catalog.may_moderate(&catalog.rooms[&1].clone(), CAROL), "and the role goes with it");
        assert_eq!(code(act(&mut catalog, 1, CAROL, CAROL, ModAction::Unban)), "forbidden", "no self-unban");

        act(&mut catalog, 2, ALICE, BOB, ModAction::Ban).expect("the admin may ban even the owner");
        assert!(!catalog.may_moderate(&catalog.rooms[&2].clone(), BOB), "a banned owner moderates nothing");
        assert_eq!(code(act(&mut catalog, 2, BOB, DAVE, ModAction::Kick)), "forbidden");
        assert_eq!(catalog.room_moderators(&catalog.rooms[&2].clone()), Vec::<UserId>::new());
    }

    #[test]
    fn one_to_one_dms_are_moderated_by_admins_only() {
        let mut catalog = setup();
        let Ok(CommandOutput::Dm { room, .. }) = catalog.apply(Command::CreateDm { a: BOB, b: CAROL, at_ms: 1 }).0
        else {
            panic!("dm")
        };
        assert_eq!(code(act(&mut catalog, room.id, BOB, CAROL, ModAction::Ban)), "dm_not_moderated");
        assert_eq!(code(act(&mut catalog, room.id, ALICE, CAROL, ModAction::Kick)), "dm_members_fixed");
        act(&mut catalog, room.id, ALICE, CAROL, ModAction::Ban).expect("the admin bans");
        assert!(catalog.is_banned(room.id, CAROL) && catalog.is_member(room.id, CAROL), "the pair stays");
        assert!(catalog.room_moderators(&room).is_empty());
    }

    #[test]
    fn the_audit_lists_every_act_in_order_and_keeps_the_newest() {
        let mut catalog = setup();
        act(&mut catalog, 1, BOB, CAROL, ModAction::Mute { until_ms: 2_000 }).expect("mute");
        act(&mut catalog, 1, BOB, CAROL, ModAction::Kick).expect("kick");
        assert_eq!(code(act(&mut catalog, 1, DAVE, BOB, ModAction::Kick)), "forbidden");
        let actions: Vec<&str> = catalog.room_audit(1).map(|entry| entry.action.name()).collect();
        assert_eq!(actions, vec!["mute", "kick"], "refused acts are not listed");
        assert_eq!(catalog.room_audit(2).count(), 0);
        for _ in 0..AUDIT_KEEP {
            act(&mut catalog, 1, BOB, DAVE, ModAction::Unmute).expect("unmute");
        }
        assert_eq!(catalog.room_audit(1).count() as u64, AUDIT_KEEP);
        assert!(catalog.room_audit(1).all(|entry| entry.action == ModAction::Unmute), "the oldest went first");
    }

    #[test]
    fn group_dms_check_their_members_and_history() {
        let mut catalog = setup();
        let mut crowd = Vec::new();
        for i in 0..20 {
            let command = Command::CreateUser { username: format!("extra{i}"), password_hash: "h".into(), at_ms: 1 };
            let Ok(CommandOutput::User(user)) = catalog.apply(command).0 else { panic!("user") };
            crowd.push(user.id);
        }
        let create = |members: Vec<UserId>| Command::CreateGroupDm {
            created_by: BOB,
            members,
            title: None,
            share_history: false,
            at_ms: 1,
        };
        for (members, expected) in [
            (vec![], "dm_with_self"),
            (vec![BOB], "duplicate_member"),
            (vec![CAROL], "group_dm_too_small"),
            (vec![CAROL, CAROL], "duplicate_member"),
            (vec![CAROL, 99], "unknown_user"),
            ((10..40).collect(), "unknown_user"),
            (crowd.clone(), "group_dm_too_large"),
        ] {
            assert_eq!(code(catalog.apply(create(members)).0), expected);
        }
        let Ok(CommandOutput::Room(room)) = catalog.apply(create(vec![CAROL, DAVE])).0 else { panic!("group") };
        assert!(room.is_group_dm() && !room.is_dm());
        assert_eq!(catalog.room_members(room.id).collect::<Vec<_>>(), vec![BOB, CAROL, DAVE]);
        let add = |by, user, last_seq| Command::AddGroupMember { room: room.id, by, user, last_seq, at_ms: 2 };
        assert_eq!(code(catalog.apply(add(ERIN, ALICE, 7)).0), "not_a_member");
        catalog.apply(add(CAROL, ERIN, 7)).0.expect("a member adds someone");
        assert_eq!(catalog.history_from(room.id, ERIN), 7);
        assert_eq!(catalog.history_from(room.id, CAROL), 0);
        assert_eq!(code(catalog.apply(Command::AddMember { room: 1, user: 99 }).0), "unknown_user");
        let titled = Command::CreateGroupDm {
            created_by: BOB,
            members: vec![CAROL, DAVE],
            title: Some("a\u{7}b".into()),
            share_history: true,
            at_ms: 1,
        };
        assert_eq!(code(catalog.apply(titled).0), "invalid_group_name");
    }

    #[test]
    fn apply_is_deterministic_and_survives_a_snapshot() {
        let run = || {
            let mut catalog = setup();
            act(&mut catalog, 1, BOB, CAROL, ModAction::AddModerator).expect("named");
            act(&mut catalog, 1, CAROL, DAVE, ModAction::Mute { until_ms: 9_000 }).expect("mute");
            act(&mut catalog, 2, BOB, DAVE, ModAction::Ban).expect("ban");
            let group = Command::CreateGroupDm {
                created_by: BOB,
                members: vec![CAROL, DAVE],
                title: Some("trio".into()),
                share_history: false,
                at_ms: 3,
            };
            catalog.apply(group).0.expect("group");
            catalog
                .apply(Command::AddGroupMember { room: 3, by: CAROL, user: ERIN, last_seq: 4, at_ms: 4 })
                .0
                .expect("add");
            catalog
        };
        let (one, two) = (run(), run());
        let bytes = crate::store::encode(&one).expect("encode");
        assert_eq!(bytes, crate::store::encode(&two).expect("encode"), "the same commands give the same bytes");
        let restored = crate::control::raft::state_machine::decode_catalog(&bytes).expect("decode");
        assert_eq!(restored, one);
        assert!(restored.is_banned(2, DAVE));
        assert_eq!(restored.history_from(3, ERIN), 4);
        assert_eq!(restored.room_audit(1).count(), 2);
    }
}
