//! Fuzzes the cache's key, insert and hit path. The input is a client's query (after a two-byte
//! length) and an upstream reply. A query the server would forward and a reply the forwarder would
//! accept (`forward::reply::judge`) go into a cache, the way a miss lands there; the same query is then asked again under
//! another ID, in another letter case, as a 0x20 resolver would. Whatever the bytes, nothing may
//! panic, and a hit:
//! - carries the second query's ID and its question bytes exactly;
//! - is no longer than the reply (its COOKIE option is not stored) and, when hickory-proto parses
//!   the reply, parses too, with the question that was asked and the reply's records (TTLs aside,
//!   and read as the client would get them: a name that points into an ID or a TTL has no meaning
//!   a relay or a cache keeps);
//! - is never served to a client whose buffer it exceeds.
#![no_main]

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use registry_dns::cache::{Cache, CachePolicy, Found, Key, Landing};
use registry_dns::dns::wire::{self, types};
use registry_dns::forward::reply::{self, Fate};
use registry_dns::forward::{LoopProbe, Upstreams};
use registry_dns::metrics::Metrics;
use registry_dns::names::NameTable;
use registry_dns::request::{self, Action, Transport};

static PROBE: LazyLock<Arc<LoopProbe>> =
    LazyLock::new(|| LoopProbe::new(Upstreams::new(&["127.0.0.1:53".parse().unwrap()], &Metrics::default())));

fuzz_target!(|input: &[u8]| {
    let Some((len, rest)) = input.split_first_chunk::<2>() else { return };
    let Some((query, reply)) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len))) else { return };
    let mut out = Vec::new();
    let Action::Forward { question_end, edns, .. } =
        request::handle(query, Transport::Udp, &NameTable::default(), &PROBE, &mut out)
    else {
        return;
    };
    if reply::judge(query, question_end, reply) != Fate::Accept {
        return;
    }
    let Some(key) = Key::of(query, question_end, edns.as_ref()) else { return };
    let cache = Cache::<()>::new(CachePolicy::default(), 1, Arc::new(AtomicU64::new(0)));
    let now = Instant::now();
    let Found::Missing(missing) = cache.lookup(&key, Transport::Udp, query, usize::MAX, now, &mut out) else {
        panic!("an empty cache holds nothing")
    };
    let flight = missing.lead(Transport::Udp);
    cache.land(flight, &key, Landing::Answer { reply, question_end }, now);

    let mut again = query.to_vec();
    wire::set_id(&mut again, !wire::id(query));
    let mut at = wire::HEADER_LEN;
    while again[at] != 0 {
        let label = usize::from(again[at]);
        for byte in &mut again[at + 1..at + 1 + label] {
            if byte.is_ascii_alphabetic() {
                *byte ^= 0x20;
            }
        }
        at += 1 + label;
    }
    let key_again = Key::of(&again, question_end, edns.as_ref()).expect("the same question is cacheable");
    assert_eq!(key_again.as_bytes(), key.as_bytes(), "case and ID never change the key");
    let limit = wire::relay_udp_limit(edns.as_ref());
    match cache.lookup(&key_again, Transport::Udp, &again, limit, now, &mut out) {
        Found::Fresh { .. } => {
            assert!(out.len() <= limit, "a hit fits the client's buffer");
            assert!(out.len() <= reply.len(), "the reply, less at most its COOKIE option");
            assert_eq!(out[..2], again[..2], "the client's ID");
            assert_eq!(out[wire::HEADER_LEN..question_end], again[wire::HEADER_LEN..question_end], "its question");
            // The reply as this client would get it relayed: under its ID, with the TTLs the hit
            // carries. A compression pointer into the header or into a TTL (malformed, but
            // hickory follows it) reads those bytes as a name, so a message's names can depend on
            // its ID and TTLs, which every relay and every cache rewrite.
            let mut relayed = reply.to_vec();
            wire::set_id(&mut relayed, wire::id(&again));
            let ttls = |m: &[u8]| {
                wire::Records::new(m, question_end)
                    .filter(|r| r.rtype != types::OPT)
                    .map(|r| r.ttl_at)
                    .collect::<Vec<_>>()
            };
            for (from, to) in ttls(&out).into_iter().zip(ttls(reply)) {
                relayed[to..to + 4].copy_from_slice(&out[from..from + 4]);
            }
            if let Ok(original) = Message::from_vec(&relayed) {
                let hit = Message::from_vec(&out).expect("a hit parses when the reply under its ID did");
                let asked = Message::from_vec(&again).expect("the query parses when its reply did");
                assert_eq!(hit.queries, asked.queries, "the question that was asked");
                let strip = |m: &Message| {
                    m.answers.iter().chain(&m.authorities).map(|r| (r.name.clone(), r.data.clone())).collect::<Vec<_>>()
                };
                assert_eq!(strip(&hit), strip(&original), "the stored records");
            }
        }
        Found::Missing(_) => {}
        Found::Stale => panic!("a fresh insert looked up as stale"),
    }
});
