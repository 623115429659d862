//! The routing table: what a chat node learns of the catalog (nodes, rooms with owner,
//! replica, epoch and members of private rooms, each room's moderators, bans, mutes and
//! group-DM history starts, the cluster admins, the connection-token key), versioned by
//! the Raft applied index it was read from (so every moderation act, a catalog write,
//! moves the version and nodes fetch the new table with their next heartbeat); what
//! changed in it since an older version (a delta, from the state machine's
//! [`RouteChanges`](super::route_changes::RouteChanges)); and the checks on the addresses
//! a node registers. Pure functions of the applied catalog: no I/O.

use super::catalog::{Catalog, ChatNode, NodeStatus, Room, ADMIN_USER};
use super::raft::state_machine::CatalogState;
use super::route_changes::RouteKey;
use crate::protocol::{NodeRoute, RoomRoute, RoutingDelta, RoutingTable, UserId};
use crate::token;

/// The routing-table version of a catalog: its Raft applied index.
pub fn version(state: &CatalogState) -> u64 {
    state.applied.last_applied.map_or(0, |log_id| log_id.index)
}

/// Every node and room of the catalog as nodes need them; members only for private rooms.
pub fn routing_table(state: &CatalogState) -> RoutingTable {
    let catalog = &state.catalog;
    let nodes = catalog.nodes.values().map(node_route).collect();
    let rooms = catalog.rooms.values().map(|room| room_route(catalog, room)).collect();
    RoutingTable { version: version(state), nodes, rooms, token_key: token_key(catalog), admins: admins(catalog) }
}

/// What changed in the routing table after version `since` (see [`RoutingDelta`]); empty
/// when `since` is this member's own version (a node that missed a lookup asks whether
/// anything changed). `None` when this member cannot say: its change index starts later
/// (it restarted or installed a snapshot since), `since` is 0, or it is newer than this
/// member's own version.
pub fn routing_delta(state: &CatalogState, since: u64) -> Option<RoutingDelta> {
    let current = version(state);
    if since == 0 || since > current {
        return None;
    }
    let catalog = &state.catalog;
    let mut delta = RoutingDelta {
        from: since,
        version: current,
        token_key: token_key(catalog),
        admins: admins(catalog),
        ..RoutingDelta::default()
    };
    for key in state.route_changes.changed_since(since)? {
        match key {
            RouteKey::Room(id) => match catalog.rooms.get(&id) {
                Some(room) => delta.rooms.push(room_route(catalog, room)),
                None => delta.removed_rooms.push(id),
            },
            RouteKey::Node(id) => match catalog.nodes.get(&id) {
                Some(node) => delta.nodes.push(node_route(node)),
                None => delta.removed_nodes.push(id),
            },
        }
    }
    Some(delta)
}

fn node_route(node: &ChatNode) -> NodeRoute {
    // A drained node still serves the sessions it has (docs/DRAINING.md): up for them.
    let up = matches!(node.status, NodeStatus::Up | NodeStatus::Drained);
    NodeRoute { id: node.id, addr: node.mesh_addr.clone(), up }
}

fn room_route(catalog: &Catalog, room: &Room) -> RoomRoute {
    let policy = catalog.policies.get(&room.id);
    RoomRoute {
        id: room.id,
        owner: room.owner,
        replica: room.replica,
        epoch: room.epoch,
        replica_in_sync: catalog.replica_in_sync(room),
        private: room.private,
        members: if room.private { catalog.room_members(room.id).collect() } else { Vec::new() },
        moderators: catalog.room_moderators(room),
        banned: policy.map(|p| p.banned.iter().copied().collect()).unwrap_or_default(),
        // Expired mutes may still be listed: nodes compare `until` with their clock.
        muted: policy.map(|p| p.muted.iter().map(|(user, until)| (*user, *until)).collect()).unwrap_or_default(),
        history_from: policy
            .map(|p| p.history_from.iter().map(|(user, seq)| (*user, *seq)).collect())
            .unwrap_or_default(),
    }
}

fn token_key(catalog: &Catalog) -> Vec<u8> {
    catalog.meta.signing_key.as_deref().map(token::derive_token_key).unwrap_or_default()
}

fn admins(catalog: &Catalog) -> Vec<UserId> {
    if catalog.is_admin(ADMIN_USER) {
        vec![ADMIN_USER]
    } else {
        Vec::new()
    }
}

/// A browser WebSocket URL: ws:// or wss://, a host, printable ASCII only. Nodes check
/// their own `public_ws_url` with it at start ([`crate::node::config::NodeConfig::load`]).
pub fn valid_ws_url(url: &str) -> bool {
    let rest = url.strip_prefix("wss://").or_else(|| url.strip_prefix("ws://"));
    url.len() <= 255 && rest.is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_graphic()))
}

/// `host:port` with a non-empty host and a numeric port, nothing else.
pub fn valid_addr(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    !host.is_empty()
        && addr.len() <= 255
        && port.parse::<u16>().is_ok_and(|port| port != 0)
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::catalog::{Catalog, Command, ModAction};

    #[test]
    fn the_table_carries_moderators_bans_mutes_history_starts_and_admins() {
        let mut catalog = Catalog::default();
        for name in ["admin", "owner", "carol", "dave", "erin"] {
            let command = Command::CreateUser { username: name.into(), password_hash: "h".into(), at_ms: 1 };
            catalog.apply(command).0.expect("user");
        }
        let room = Command::CreateRoom { name: "lobby".into(), private: false, created_by: 2, at_ms: 1 };
        catalog.apply(room).0.expect("room");
        for user in [3, 4] {
            catalog.apply(Command::AddMember { room: 1, user }).0.expect("join");
        }
        let act = |user, action| Command::Moderate { room: 1, by: 2, user, action, at_ms: 10 };
        catalog.apply(act(3, ModAction::AddModerator)).0.expect("moderator");
        catalog.apply(act(4, ModAction::Mute { until_ms: 500 })).0.expect("mute");
        catalog.apply(act(5, ModAction::Ban)).0.expect("ban");
        let group =
            Command::CreateGroupDm { created_by: 2, members: vec![3, 4], title: None, share_history: false, at_ms: 1 };
        catalog.apply(group).0.expect("group");
        catalog.apply(Command::AddGroupMember { room: 2, by: 3, user: 5, last_seq: 9, at_ms: 2 }).0.expect("add");

        let table = routing_table(&CatalogState { catalog, ..CatalogState::default() });
        assert_eq!(table.admins, vec![1]);
        let lobby = table.rooms.iter().find(|room| room.id == 1).expect("lobby");
        assert_eq!(lobby.moderators, vec![2, 3], "the owner first, then the named moderators");
        assert_eq!(lobby.muted, vec![(4, 500)]);
        assert_eq!(lobby.banned, vec![5]);
        let group = table.rooms.iter().find(|room| room.id == 2).expect("group");
        assert_eq!(group.members, vec![2, 3, 4, 5]);
        assert_eq!(group.history_from, vec![(5, 9)]);
    }

    #[test]
    fn addresses_are_host_and_port() {
        for good in ["127.0.0.1:7100", "node-1.internal:80", "[::1]:7100"] {
            assert!(valid_addr(good), "{good}");
        }
        for bad in ["", "127.0.0.1", ":7100", "host:0", "host:http", "a b:1", "host/x:1", "http://h:1"] {
            assert!(!valid_addr(bad), "{bad}");
        }
    }

    #[test]
    fn public_websocket_urls_are_ws_or_wss() {
        for good in ["wss://chat.example.com/n1/ws", "ws://10.0.0.5:7100/ws"] {
            assert!(valid_ws_url(good), "{good}");
        }
        for bad in ["", "wss://", "https://chat.example.com/ws", "wss://a b/ws", "javascript:alert(1)"] {
            assert!(!valid_ws_url(bad), "{bad}");
        }
    }
}
