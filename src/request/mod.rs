//! Request handling: the one decision every query goes through, whatever socket it came from.
//!
//! A query for a local name (or below one) is answered here from the name table's pre-encoded
//! answers; anything malformed gets its error answer (or nothing); every other query is handed
//! back to the caller to forward, untouched.

use tracing::debug;

pub use crate::dns::Transport;
use crate::dns::wire::{self, Edns, Malformed, Query, rcode, types};
use crate::forward::LoopProbe;
use crate::names::{Entry, Lookup, NameTable};

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The answer is in the output buffer. `qtype` is the question's type, when it could be read
    /// (for metrics).
    Reply { qtype: Option<u16> },
    /// Not ours: forward the packet upstream as it is. The question's end and the client's EDNS
    /// are what a SERVFAIL needs if no upstream answers.
    Forward { question_end: usize, edns: Option<Edns>, qtype: u16 },
    /// One of our loop probes came back: `upstream` sends our queries back to us, and the caller
    /// drops it (`LoopProbe::drop_upstream`). The answer (REFUSED) is in the output buffer.
    LoopedBack { upstream: usize, qtype: u16 },
    /// Send nothing.
    Drop,
}

/// Decides what `packet` gets; writes the answer into `out` when the action is [`Action::Reply`]
/// or [`Action::LoopedBack`]. Pure: whatever is to be done beyond the answer, the caller does.
pub fn handle(packet: &[u8], transport: Transport, table: &NameTable, probe: &LoopProbe, out: &mut Vec<u8>) -> Action {
    let mut lower = [0u8; wire::MAX_NAME_LEN];
    let query = match wire::parse_query(packet, &mut lower) {
        Ok(query) => query,
        Err(malformed) => return reject(packet, malformed, out),
    };
    if let Some(edns) = &query.edns
        && edns.version > 0
    {
        wire::write_empty_answer(packet, Some(query.question_end), rcode::BADVERS, Some(edns), false, out);
        return Action::Reply { qtype: Some(query.qtype) };
    }
    let name = &lower[..query.name_len];
    match table.lookup(name) {
        Lookup::Apex(entry) => answer_apex(packet, &query, entry, transport, out),
        Lookup::Below(entry) => answer_below(packet, &query, entry, out),
        Lookup::Elsewhere => match probe.upstream_of(name) {
            Some(upstream) => {
                reply_with(packet, &query, rcode::REFUSED, out);
                Action::LoopedBack { upstream, qtype: query.qtype }
            }
            None => forward(&query),
        },
    }
}

fn forward(query: &Query) -> Action {
    debug!(qtype = query.qtype, "forwarding");
    Action::Forward { question_end: query.question_end, edns: query.edns, qtype: query.qtype }
}

/// Answers a query from a source outside `--allow-from`: REFUSED for a query, nothing for
/// anything else (so we cannot be used to reflect garbage).
pub fn refuse(packet: &[u8], out: &mut Vec<u8>) -> Action {
    let mut lower = [0u8; wire::MAX_NAME_LEN];
    match wire::parse_query(packet, &mut lower) {
        Ok(query) => {
            reply_with(packet, &query, rcode::REFUSED, out);
            Action::Reply { qtype: Some(query.qtype) }
        }
        Err(_) => Action::Drop,
    }
}

fn reject(packet: &[u8], malformed: Malformed, out: &mut Vec<u8>) -> Action {
    debug!(%malformed, len = packet.len(), "rejecting packet");
    match malformed {
        Malformed::Drop => Action::Drop,
        Malformed::NotImp => {
            wire::write_notimp(packet, out);
            Action::Reply { qtype: None }
        }
        Malformed::FormErr { question_end } => {
            wire::write_empty_answer(packet, question_end, rcode::FORMERR, None, false, out);
            Action::Reply { qtype: None }
        }
    }
}

fn reply_with(packet: &[u8], query: &Query, rcode: u16, out: &mut Vec<u8>) {
    wire::write_empty_answer(packet, Some(query.question_end), rcode, query.edns.as_ref(), false, out);
}

fn limit(query: &Query, transport: Transport) -> usize {
    match transport {
        Transport::Udp => query.udp_limit(),
        Transport::Tcp => usize::from(u16::MAX),
    }
}

fn answer_apex(packet: &[u8], query: &Query, entry: &Entry, transport: Transport, out: &mut Vec<u8>) -> Action {
    debug!(qtype = query.qtype, "local answer");
    match entry {
        Entry::Pending => reply_with(packet, query, rcode::SERVFAIL, out),
        Entry::Ready(_) if !serves_class(query.qclass) => reply_with(packet, query, rcode::REFUSED, out),
        Entry::Ready(answers) => {
            wire::write_from_template(packet, query, answers.for_type(query.qtype), limit(query, transport), out)
        }
    }
    Action::Reply { qtype: Some(query.qtype) }
}

fn answer_below(packet: &[u8], query: &Query, entry: &Entry, out: &mut Vec<u8>) -> Action {
    match entry {
        Entry::Pending => reply_with(packet, query, rcode::SERVFAIL, out),
        Entry::Ready(_) if !serves_class(query.qclass) => reply_with(packet, query, rcode::REFUSED, out),
        Entry::Ready(answers) => wire::write_with_authority(packet, query, rcode::NXDOMAIN, &answers.soa_record, out),
    }
    Action::Reply { qtype: Some(query.qtype) }
}

/// Local zones are class IN; a question in another class (CHAOS, HESIOD) is not ours to answer.
fn serves_class(qclass: u16) -> bool {
    qclass == types::CLASS_IN || qclass == types::CLASS_ANY
}
