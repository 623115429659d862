//! The clients that talk to a cluster from outside.

pub mod bench;
pub mod chaos;
pub mod dev;
pub mod drain;
pub mod drill;
pub mod rebalance;
pub mod status;
