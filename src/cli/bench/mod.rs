//! Load generators: `districhat bench` (chat: real WebSocket clients through the nodes)
//! and `districhat bench-control` (catalog writes through the control plane's API), and
//! `districhat bench-seed` (a large catalog for those, over the cluster-secret write path).

pub mod chat;
pub mod control;
pub mod seed;
