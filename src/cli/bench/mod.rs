//! Load generators: `districhat bench` (chat: real WebSocket clients through the nodes)
//! and `districhat bench-control` (catalog writes through the control plane's API).

pub mod chat;
pub mod control;
