//! The DNS wire format, as far as the hot path reads and patches it.

pub mod wire;
