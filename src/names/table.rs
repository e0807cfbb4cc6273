//! The name table: every local name and what it answers, read by the hot path without locks.
//!
//! Sources publish a [`NameState`] per name into [`Names`]; each change rebuilds the table's
//! pre-encoded answers off the hot path and swaps the whole table in atomically, so a query sees
//! either the old answers or the new ones, never a half-built mix or a moment with none.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinEncodable;
use rustc_hash::FxHashMap;
use tokio::sync::Mutex;

use super::zone::{Answers, ZoneSettings};

/// What a source says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameState {
    /// The source has not completed its first sync: the name answers SERVFAIL, never NXDOMAIN,
    /// which resolvers would cache.
    Pending,
    /// The name's current addresses; empty means NODATA with a short negative TTL.
    Addresses(Vec<IpAddr>),
}

/// A local name as the hot path sees it.
#[derive(Debug)]
pub enum Entry {
    Pending,
    Ready(Answers),
}

/// Where a query name falls relative to the local names.
#[derive(Debug)]
pub enum Lookup<'t> {
    /// The name itself.
    Apex(&'t Entry),
    /// A name below a local name: NXDOMAIN in that zone.
    Below(&'t Entry),
    /// Not ours: forward it.
    Elsewhere,
}

/// An immutable snapshot of every local name, keyed by its lower-cased wire form.
#[derive(Debug, Default)]
pub struct NameTable {
    entries: FxHashMap<Box<[u8]>, Entry>,
    /// Every name with its address count (`None` while pending), for metrics.
    summary: Vec<(String, Option<usize>)>,
}

impl NameTable {
    /// Finds `name` (lower-cased wire form) or the local name it lies below.
    pub fn lookup(&self, name: &[u8]) -> Lookup<'_> {
        if let Some(entry) = self.entries.get(name) {
            return Lookup::Apex(entry);
        }
        let mut at = 0;
        while let Some(&label) = name.get(at) {
            if label == 0 {
                break;
            }
            at += 1 + usize::from(label);
            if name.get(at).is_some_and(|&l| l != 0)
                && let Some(entry) = self.entries.get(&name[at..])
            {
                return Lookup::Below(entry);
            }
        }
        Lookup::Elsewhere
    }

    /// Every name (presentation form) with its address count, `None` while pending.
    pub fn summary(&self) -> &[(String, Option<usize>)] {
        &self.summary
    }

    async fn build(states: &BTreeMap<Name, NameState>, settings: &ZoneSettings) -> anyhow::Result<Self> {
        let mut entries = FxHashMap::default();
        let mut summary = Vec::with_capacity(states.len());
        for (name, state) in states {
            let entry = match state {
                NameState::Pending => Entry::Pending,
                NameState::Addresses(addresses) => Entry::Ready(Answers::build(name, addresses, settings).await?),
            };
            entries.insert(wire_key(name)?, entry);
            let count = match state {
                NameState::Pending => None,
                NameState::Addresses(addresses) => Some(addresses.len()),
            };
            summary.push((name.to_string(), count));
        }
        Ok(Self { entries, summary })
    }
}

fn wire_key(name: &Name) -> anyhow::Result<Box<[u8]>> {
    Ok(name.to_lowercase().to_bytes()?.into_boxed_slice())
}

/// The published local names: where sources write and the hot path reads.
#[derive(Debug)]
pub struct Names {
    table: ArcSwap<NameTable>,
    states: Mutex<BTreeMap<Name, NameState>>,
    ttl: u32,
    ns_name: Name,
    max_answers: usize,
}

impl Names {
    /// Declares the local names, all [`NameState::Pending`] until their source publishes them.
    /// Answers carry the names' records with `ttl`, `ns_name` as NS, and at most `max_answers`
    /// addresses of a family each.
    pub async fn new(
        names: impl IntoIterator<Item = Name>,
        ttl: u32,
        ns_name: Name,
        max_answers: usize,
    ) -> anyhow::Result<Arc<Self>> {
        let states: BTreeMap<Name, NameState> = names.into_iter().map(|n| (n, NameState::Pending)).collect();
        let this = Self {
            table: ArcSwap::from_pointee(NameTable::default()),
            states: Mutex::new(states),
            ttl,
            ns_name,
            max_answers,
        };
        {
            let states = this.states.lock().await;
            this.rebuild(&states).await?;
        }
        Ok(Arc::new(this))
    }

    /// The current table; cheap enough to call per batch of packets.
    pub fn load(&self) -> Guard<Arc<NameTable>> {
        self.table.load()
    }

    /// Publishes the state of one declared name; returns whether it changed. A name that was never
    /// declared is an error, so a source cannot make the server authoritative for something nobody
    /// configured.
    pub async fn publish(&self, name: &Name, state: NameState) -> anyhow::Result<bool> {
        let mut states = self.states.lock().await;
        match states.get_mut(name) {
            Some(current) if *current == state => return Ok(false),
            Some(current) => *current = state,
            None => anyhow::bail!("{name} is not a configured name"),
        }
        self.rebuild(&states).await?;
        Ok(true)
    }

    /// Replaces a set of names in one step (one rebuild, one swap, so a query sees all of the
    /// change or none of it): `remove` are undeclared, `set` are declared if new and published.
    /// On error nothing changes. Used by a reload that changes the static records.
    pub async fn replace(&self, remove: &[Name], set: &[(Name, NameState)]) -> anyhow::Result<()> {
        let mut states = self.states.lock().await;
        let mut next = states.clone();
        for name in remove {
            next.remove(name);
        }
        for (name, state) in set {
            next.insert(name.clone(), state.clone());
        }
        self.rebuild(&next).await?;
        *states = next;
        Ok(())
    }

    /// One line for the logs: every name with its addresses, or `pending`.
    pub async fn describe(&self) -> String {
        let states = self.states.lock().await;
        let describe = |(name, state): (&Name, &NameState)| match state {
            NameState::Pending => format!("{name}=pending"),
            NameState::Addresses(ips) => {
                format!("{name}={}", ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","))
            }
        };
        states.iter().map(describe).collect::<Vec<_>>().join(" ")
    }

    async fn rebuild(&self, states: &BTreeMap<Name, NameState>) -> anyhow::Result<()> {
        let settings = ZoneSettings {
            ttl: self.ttl,
            ns_name: self.ns_name.clone(),
            serial: serial_now(),
            max_answers: self.max_answers,
        };
        let table = NameTable::build(states, &settings).await?;
        self.table.store(Arc::new(table));
        Ok(())
    }
}

/// SOA serial: seconds since the epoch, which only grows between rebuilds a second apart or more;
/// nothing transfers these zones, so finer ordering is not needed.
fn serial_now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[tokio::test]
    async fn finds_names_and_names_below_them_case_folded_keys_only() {
        let names =
            Names::new([name("knative-local-registry."), name("reg.example.")], 5, name("ns."), 16).await.unwrap();
        names.publish(&name("reg.example."), NameState::Addresses(vec![])).await.unwrap();
        let table = names.load();
        let key = |s: &str| name(s).to_bytes().unwrap();
        assert!(matches!(table.lookup(&key("knative-local-registry.")), Lookup::Apex(Entry::Pending)));
        assert!(matches!(table.lookup(&key("reg.example.")), Lookup::Apex(Entry::Ready(_))));
        assert!(matches!(table.lookup(&key("x.y.reg.example.")), Lookup::Below(Entry::Ready(_))));
        assert!(matches!(table.lookup(&key("example.")), Lookup::Elsewhere));
        assert!(matches!(table.lookup(&key("registry.")), Lookup::Elsewhere));
        assert!(matches!(table.lookup(&[0]), Lookup::Elsewhere));
    }

    #[tokio::test]
    async fn replace_swaps_names_in_and_out_at_once() {
        let names = Names::new([name("a."), name("b.")], 5, name("ns."), 16).await.unwrap();
        let ip = "10.0.0.1".parse().unwrap();
        names.replace(&[name("a.")], &[(name("c."), NameState::Addresses(vec![ip]))]).await.unwrap();
        let table = names.load();
        let key = |s: &str| name(s).to_bytes().unwrap();
        assert!(matches!(table.lookup(&key("a.")), Lookup::Elsewhere));
        assert!(matches!(table.lookup(&key("b.")), Lookup::Apex(Entry::Pending)));
        assert!(matches!(table.lookup(&key("c.")), Lookup::Apex(Entry::Ready(_))));
        assert!(names.publish(&name("c."), NameState::Addresses(vec![])).await.unwrap());
        assert!(names.publish(&name("a."), NameState::Pending).await.is_err());
    }

    #[tokio::test]
    async fn publishing_an_undeclared_name_is_refused() {
        let names = Names::new([name("a.")], 5, name("ns."), 16).await.unwrap();
        assert!(names.publish(&name("b."), NameState::Pending).await.is_err());
    }
}
