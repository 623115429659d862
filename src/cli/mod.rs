//! The clients: everything that talks to a cluster from outside, one module per
//! subcommand of the binary (`src/main.rs` only parses and dispatches here). They reach
//! the cluster over HTTP and WebSockets like any other client; the API types they read
//! come from `control::http::views` and the drain and rebalance modules of
//! `control::http`, whose client ends `drain` and `rebalance` are.
//!
//! - [`status`]: `districhat status`, the cluster at a glance.
//! - [`admin`]: `districhat init` and `districhat admin ...` (members, node approval,
//!   backups, after-restore; the terminal side of drains and rebalancing).
//! - [`drain`], [`rebalance`]: the drain and rebalance API clients with their bounded waits.
//! - [`dev`]: `districhat dev`, three controls and two nodes in one process.
//! - [`drill`]: `districhat drill`, kill a leader, node or replica of a running cluster.
//! - [`bench`](mod@bench): `districhat bench` and `bench-control`, load over WebSockets and HTTP.
//! - [`chaos`]: `districhat chaos`, a cluster of its own under faults, with a history checker.

pub mod admin;
pub mod bench;
pub mod chaos;
pub mod dev;
pub mod drain;
pub mod drill;
pub mod rebalance;
pub mod status;

/// Prints a command's report: pretty JSON with `--json`, else the text `render` makes.
pub fn print_report<R: serde::Serialize>(
    report: &R,
    json: bool,
    render: impl FnOnce(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", render(report));
    }
    Ok(())
}
