//! Fuzzes the query path as a listener drives it: `request::handle` over a name table with every
//! kind of local name, for UDP and TCP, then what the listener does with the outcome. Whatever the
//! bytes, nothing may panic, and:
//! - a reply parses with hickory-proto, is a response with the query's ID, echoes the question
//!   exactly when it parsed, and fits the client's UDP payload size;
//! - only runts and responses are dropped;
//! - a forwarded query agrees with `wire::parse_query`, its SERVFAIL/REFUSED answers (sent when no
//!   upstream answers or the in-flight cap is hit) are replies as above, and an upstream's answer
//!   echoing it is accepted by `forward::reply::judge` (its SERVFAIL moves on);
//! - `request::refuse` (a client outside --allow-from) answers REFUSED or nothing.
#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use registry_dns::dns::wire::{self, Malformed, rcode};
use registry_dns::forward::reply::{self, Fate};
use registry_dns::forward::{LoopProbe, Upstreams};
use registry_dns::metrics::Metrics;
use registry_dns::names::{NameState, NameTable, Names};
use registry_dns::request::{self, Action, Transport};

struct Server {
    table: Arc<NameTable>,
    probe: Arc<LoopProbe>,
}

/// Local names of every state: one address, more addresses than --max-answers (windows), IPv6
/// only, no addresses (NODATA), and a source not synced yet (SERVFAIL).
static SERVER: LazyLock<Server> = LazyLock::new(|| {
    let name = |s: &str| Name::from_ascii(s).unwrap();
    let many: Vec<IpAddr> = (0..40u8)
        .flat_map(|i| [IpAddr::from([10, 1, 0, i]), IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i)])])
        .collect();
    let states = [
        ("knative-local-registry.", NameState::Addresses(vec!["10.0.0.10".parse().unwrap()])),
        ("many.example.", NameState::Addresses(many)),
        ("v6.only.", NameState::Addresses(vec!["fd00::1".parse().unwrap()])),
        ("empty.local.", NameState::Addresses(vec![])),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let names = runtime.block_on(async {
        let declared = states.iter().map(|(n, _)| name(n)).chain([name("pending.local.")]);
        let names = Names::new(declared, 5, name("ns.registry-dns."), 16).await.unwrap();
        for (n, state) in states {
            names.publish(&name(n), state).await.unwrap();
        }
        names
    });
    let upstreams = Upstreams::new(&["127.0.0.1:53".parse().unwrap()], &Metrics::default());
    Server { table: Arc::clone(&names.load()), probe: LoopProbe::new(upstreams) }
});

fuzz_target!(|packet: &[u8]| {
    let server = &*SERVER;
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut out = Vec::new();
        match request::handle(packet, transport, &server.table, &server.probe, &mut out) {
            Action::Reply { .. } | Action::LoopedBack { .. } => {
                check_reply(packet, transport, &out);
            }
            Action::Forward { question_end, edns, qtype } => check_forward(packet, question_end, edns, qtype),
            Action::Drop => {
                assert!(packet.len() < wire::HEADER_LEN || wire::is_response(packet), "only runts and responses drop")
            }
        }
    }
    let mut out = Vec::new();
    match request::refuse(packet, &mut out) {
        Action::Reply { .. } => {
            assert_eq!(u16::from(check_reply(packet, Transport::Udp, &out).metadata.response_code), 5)
        }
        Action::Drop => {}
        Action::Forward { .. } | Action::LoopedBack { .. } => panic!("a refused client's query was forwarded"),
    }
});

/// Checks an answer to `packet` and returns it parsed.
fn check_reply(packet: &[u8], transport: Transport, out: &[u8]) -> Message {
    let message = Message::from_vec(out).unwrap_or_else(|e| panic!("our answer does not parse: {e}\n{out:02x?}"));
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(message.metadata.id, wire::id(packet));
    let mut lower = [0; wire::MAX_NAME_LEN];
    let parsed = wire::parse_query(packet, &mut lower);
    let echoed = match parsed {
        Ok(query) => Some(query.question_end),
        Err(Malformed::FormErr { question_end }) => question_end,
        Err(_) => None,
    };
    match echoed {
        Some(end) => {
            assert_eq!(message.queries.len(), 1);
            assert_eq!(out[wire::HEADER_LEN..end], packet[wire::HEADER_LEN..end], "question echoed byte for byte");
        }
        None => assert!(message.queries.is_empty()),
    }
    let limit = match (transport, parsed) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Ok(query)) => query.udp_limit(),
        (Transport::Udp, Err(_)) => usize::from(wire::CLASSIC_UDP_PAYLOAD),
    };
    assert!(out.len() <= limit, "{} bytes over a limit of {limit}", out.len());
    message
}

fn check_forward(packet: &[u8], question_end: usize, edns: Option<wire::Edns>, qtype: u16) {
    let query = wire::parse_query(packet, &mut [0; wire::MAX_NAME_LEN]).expect("a forwarded query parses");
    assert_eq!((query.question_end, query.edns, query.qtype), (question_end, edns, qtype));
    for code in [rcode::SERVFAIL, rcode::REFUSED] {
        let mut out = Vec::new();
        wire::write_empty_answer(packet, Some(question_end), code, edns.as_ref(), false, &mut out);
        let answer = check_reply(packet, Transport::Udp, &out);
        assert_eq!(u16::from(answer.metadata.response_code), code);
    }
    let mut echo = packet.to_vec();
    echo[2] |= 0x80;
    echo[3] &= 0xf0;
    assert_eq!(reply::judge(packet, question_end, &echo), Fate::Accept, "the upstream's answer is accepted");
    echo[3] |= rcode::SERVFAIL as u8;
    assert_eq!(reply::judge(packet, question_end, &echo), Fate::MoveOn, "its SERVFAIL moves on");
}
