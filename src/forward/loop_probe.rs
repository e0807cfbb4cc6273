//! Forwarding-loop detection, as CoreDNS's `loop` plugin does it.
//!
//! At startup each upstream is sent a query for a random name under a reserved label. Only a
//! loop (an upstream that forwards back to us, such as a resolv.conf pointing at ourselves) can
//! bring that name back to our own listeners; when it does, that upstream is dropped with an
//! error, instead of queries circling until everything times out.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use rand::Rng;
use tokio::net::UdpSocket;
use tracing::debug;

use super::Upstreams;

/// The reserved suffix: `.invalid` can never exist in the public DNS (RFC 6761 section 6.4).
const PROBE_SUFFIX: &str = "loop-probe.registry-dns.invalid.";

/// The probe names, one per upstream, and what to do when one comes back.
#[derive(Debug)]
pub struct LoopProbe {
    /// Each upstream's probe name, by upstream index.
    names: Vec<Name>,
    /// The same names in lower-cased wire form, as the hot path compares them.
    wire_names: Vec<Box<[u8]>>,
    upstreams: Arc<Upstreams>,
}

impl LoopProbe {
    pub fn new(upstreams: Arc<Upstreams>) -> Arc<Self> {
        let mut rng = rand::rng();
        let names: Vec<Name> = (0..upstreams.len())
            .map(|_| {
                let label = format!("{:016x}", rng.random::<u64>());
                Name::from_ascii(format!("{label}.{PROBE_SUFFIX}")).expect("valid probe name")
            })
            .collect();
        let wire_names = names.iter().map(|n| n.to_bytes().expect("encodable probe name").into_boxed_slice()).collect();
        Arc::new(Self { names, wire_names, upstreams })
    }

    /// The upstream whose probe `name` (lower-cased wire form) is, when it is one of ours coming
    /// back: that upstream loops. Cheap enough for every forwarded query: all probe names have one
    /// length, so most names are ruled out by it.
    pub fn upstream_of(&self, name: &[u8]) -> Option<usize> {
        if self.wire_names.first().is_none_or(|n| n.len() != name.len()) {
            return None;
        }
        self.wire_names.iter().position(|n| **n == *name)
    }

    /// Drops upstream `index` for good: its probe came back (see [`LoopProbe::upstream_of`]).
    pub fn drop_upstream(&self, index: usize) {
        self.upstreams.disable_looped(index);
    }

    /// Sends every upstream its probe; the answers do not matter, only whether a probe comes
    /// back to our listeners (see [`LoopProbe::upstream_of`]).
    pub async fn send(self: Arc<Self>, timeout: Duration) {
        let mut tasks = Vec::new();
        for index in 0..self.names.len() {
            let this = self.clone();
            tasks.push(tokio::spawn(async move {
                let addr = this.upstreams.addr(index);
                if let Err(e) = this.send_one(index, addr, timeout).await {
                    debug!(upstream = %addr, error = %e, "loop probe got no answer");
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn send_one(&self, index: usize, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let name = self.names[index].clone();
        let mut query = Message::query();
        query.metadata.id = rand::random();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name, RecordType::HINFO));
        let local: SocketAddr =
            if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
        let socket = UdpSocket::bind(local).await?;
        socket.send_to(&query.to_vec()?, addr).await?;
        let mut buf = [0u8; 512];
        tokio::time::timeout(timeout, socket.recv_from(&mut buf)).await??;
        Ok(())
    }
}
