//! The control's HTTP edge.

pub mod admin;
pub mod backup;
pub mod chat;
pub mod cluster;
pub mod drain;
pub mod error;
pub mod nodes;
pub mod rebalance;
pub mod rooms;
pub mod web;
