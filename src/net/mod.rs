//! Socket-level building blocks shared by the listeners and the forwarder.

pub mod batch;
pub mod limits;
