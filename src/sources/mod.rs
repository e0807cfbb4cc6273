//! Name sources: where the addresses of local names come from. Each source publishes
//! [`NameState`](crate::names::NameState)s into the [`Names`](crate::names::Names) table; the hot
//! path only ever reads that table.

pub mod static_records;
