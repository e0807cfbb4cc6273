//! Fuzzes the relay's handling of an upstream's reply. The input is a client's query (after a
//! two-byte length) and the reply; a query the server would forward goes "upstream" with the
//! client's ID bit-flipped (the relay's own ID), and `forward::reply::judge` decides on the reply
//! as both relays do. Whatever the bytes, nothing may panic, and:
//! - an accepted reply (or one that moves on to the next upstream) is a response with the relay's
//!   ID and the same question (QTYPE and QCLASS byte for byte, the name in any case); when
//!   hickory-proto parses both, it sees the same question in each;
//! - restoring the client's ID changes those two bytes and nothing else: the relay is byte for byte.
#![no_main]

use std::sync::LazyLock;

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use registry_dns::dns::wire;
use registry_dns::forward::reply::{self, Fate};
use registry_dns::forward::{LoopProbe, Upstreams};
use registry_dns::metrics::Metrics;
use registry_dns::names::NameTable;
use registry_dns::request::{self, Action, Transport};

/// No local names: every well-formed query is forwarded.
static PROBE: LazyLock<std::sync::Arc<LoopProbe>> =
    LazyLock::new(|| LoopProbe::new(Upstreams::new(&["127.0.0.1:53".parse().unwrap()], &Metrics::default())));

fuzz_target!(|input: &[u8]| {
    let Some((len, rest)) = input.split_first_chunk::<2>() else { return };
    let Some((query, reply)) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len))) else { return };
    let mut out = Vec::new();
    let Action::Forward { question_end, .. } =
        request::handle(query, Transport::Udp, &NameTable::default(), &PROBE, &mut out)
    else {
        return;
    };
    let client_id = wire::id(query);
    let mut sent = query.to_vec();
    wire::set_id(&mut sent, !client_id);

    let fate = reply::judge(&sent, question_end, reply);
    if fate == Fate::Ignore {
        return;
    }
    assert!(wire::is_response(reply));
    assert_eq!(wire::id(reply), !client_id);
    assert_eq!(fate == Fate::MoveOn, matches!(wire::rcode_of(reply), 2 | 5));
    assert!(sent[wire::HEADER_LEN..question_end].eq_ignore_ascii_case(&reply[wire::HEADER_LEN..question_end]));
    assert_eq!(sent[question_end - 4..question_end], reply[question_end - 4..question_end], "QTYPE and QCLASS exactly");
    if let (Ok(answer), Ok(asked)) = (Message::from_vec(reply), Message::from_vec(query)) {
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert_eq!(answer.queries, asked.queries, "hickory sees the question we asked");
    }

    let mut relayed = reply.to_vec();
    wire::set_id(&mut relayed, client_id);
    assert_eq!(wire::id(&relayed), client_id);
    assert_eq!(relayed[2..], reply[2..], "relayed byte for byte");
});
