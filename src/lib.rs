//! DistriChat: a distributed real-time chat system.
//!
//! Layout (see ARCHITECTURE.md for the invariants):
//! - [`config`]: typed configuration (TOML file + flags/env).
//! - [`control`]: a control-plane member — the openraft group replicating the catalog
//!   (users, signing key, chat-node registry, rooms, memberships, room assignments),
//!   its RocksDB storage, HTTP network, REST API and admin endpoints.
//! - [`store`]: RocksDB helpers (opening, encoding, big-endian keys).
//! - [`telemetry`]: tracing and Prometheus metrics.
//! - [`status`], [`dev`]: the `status` and `dev` subcommands.

pub mod config;
pub mod control;
pub mod dev;
pub mod status;
pub mod store;
pub mod telemetry;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
