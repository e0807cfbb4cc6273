//! registry-dns: a small, fast DNS server for Kubernetes clusters that answers a cluster
//! registry's TLD-less name (such as `knative-local-registry`) authoritatively and relays every
//! other query, byte for byte, to the upstream servers.
//!
//! The data flows one way: sockets (`server`) -> the decision (`request`) -> a local answer from
//! the name table (`names`), or the forwarding boundary (`forward`): the cache (`cache`), then the
//! upstreams. Sources (`sources`) publish into the name table; the hot path only reads it.
//!
//! # Embedding
//!
//! ```no_run
//! use registry_dns::{Config, Server};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let config = Config {
//!     listen: vec!["127.0.0.1:5353".parse()?],
//!     records: vec!["knative-local-registry=10.0.0.10".parse().map_err(anyhow::Error::msg)?],
//!     upstreams: vec!["127.0.0.1:53".parse()?],
//!     ..Config::default()
//! };
//! let server = Server::bind(config).await?;
//! println!("serving on {:?}", server.local_addrs());
//! server.run(registry_dns::server::shutdown::signal_shutdown()).await
//! # }
//! ```

pub mod access;
pub mod cache;
pub mod config;
pub mod dns;
pub mod doctor;
pub mod forward;
pub mod interface;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod names;
pub mod net;
pub mod node_setup;
pub mod ops;
pub mod request;
pub mod server;
pub mod sources;

pub use config::Config;
pub use server::Server;
