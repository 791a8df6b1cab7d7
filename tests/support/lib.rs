//! Shared test support of the workspace: the store conformance suite and fresh databases.

pub mod buses;
pub mod conformance;
pub mod databases;
pub mod logs;
