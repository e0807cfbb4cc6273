//! The value types every part of registry-dns shares: what a local name is (`--record`,
//! `--service`, `--answer`) and what an upstream address is. A leaf: it depends on no other module
//! of the crate, so configuration, sources, the doctor and the server all build on it without
//! depending on each other. No command-line derives here: the command line adapts to these types.

mod record;
mod service;
mod upstream_addr;

pub use record::{StaticRecord, parse_local_name};
pub use service::{AnswerMode, ServiceName};
pub use upstream_addr::parse_upstream;
