//! Name sources: where the addresses of local names come from. Each source publishes
//! [`NameState`](crate::names::NameState)s into the [`Names`](crate::names::Names) table; the hot
//! path only ever reads that table.
//!
//! - `static_records`: `--record NAME=IP`, published once at startup;
//! - `kubernetes`: `--service NAME=NAMESPACE/SERVICE`, following the Service live.

pub mod kubernetes;
pub mod static_records;
