//! Load generators: `districhat bench` (chat: real WebSocket clients through the nodes),
//! `bench-control` (catalog writes through the control plane's API), `bench-seed` (a
//! large catalog for those, over the cluster-secret write path), `bench-idle` (many
//! authenticated idle sockets on one node: its memory per connection) and `bench-storm`
//! (a node with many clients killed: how fast they are all back elsewhere, nothing lost).

pub mod chat;
pub mod control;
pub mod idle;
pub mod procfs;
pub mod seed;
pub mod socket;
pub mod storm;
