//! Just enough of the DNS wire format (RFC 1035, RFC 6891) for the hot path.
//!
//! Every packet passes through here, local or forwarded, so this module reads only what a decision
//! needs (header, the one question, the OPT record) straight from the bytes, without allocating.
//! Whole messages are built and parsed with hickory-proto elsewhere, off the hot path.

use std::fmt;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form, root label included (RFC 1035 section 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 section 2.3.4); larger length bytes are pointers or reserved.
const MAX_LABEL_LEN: usize = 63;
/// Largest UDP answer we build ourselves: the DNS flag day 2020 figure, safe from fragmentation.
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// UDP answer size limit for clients that send no OPT record (RFC 1035).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// Size of the OPT record we append: root name, type, class, TTL, empty RDATA.
pub const OPT_RR_LEN: usize = 11;

/// Record types and classes the decision looks at.
pub mod types {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const SOA: u16 = 6;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const ANY: u16 = 255;
    pub const CLASS_IN: u16 = 1;
    /// EDNS option codes (RFC 7873, RFC 7830).
    pub const OPTION_COOKIE: u16 = 10;
    pub const OPTION_PADDING: u16 = 12;
    pub const CLASS_ANY: u16 = 255;
}

/// Response codes; values above 15 travel partly in the OPT record (RFC 6891 section 6.1.3).
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const BADVERS: u16 = 16;
}

// Header flag bits, byte 2 and byte 3.
const QR: u8 = 0x80;
const OPCODE_MASK: u8 = 0x78;
const AA: u8 = 0x04;
const TC: u8 = 0x02;
const RD: u8 = 0x01;
const RA: u8 = 0x80;
const CD: u8 = 0x10;
const AD_FLAG: u8 = 0x20;
const DO_BIT: u32 = 0x8000;

/// The EDNS0 parameters of a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size.
    pub payload: u16,
    /// EDNS version; we implement 0.
    pub version: u8,
    /// The DO bit (RFC 3225), echoed in our answers.
    pub dnssec_ok: bool,
    /// Whether the OPT record carries options other than COOKIE and PADDING (or options that do
    /// not parse): an answer may depend on them (ECS, NSID...), so it is not cached.
    pub other_options: bool,
}

/// What the hot path knows about a query after [`parse_query`].
#[derive(Debug, Clone, Copy)]
pub struct Query {
    /// Offset just past the question (name, type, class).
    pub question_end: usize,
    /// Length of the question name in wire form.
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl Query {
    /// Largest answer this client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            Some(e) => e.payload.clamp(CLASSIC_UDP_PAYLOAD, OUR_UDP_PAYLOAD) as usize,
            None => CLASSIC_UDP_PAYLOAD as usize,
        }
    }
}

/// Why a packet is not a query we can act on, and so what answer (if any) it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Too short for a header, or a response (QR=1): never answered, so that two servers
    /// cannot be made to bounce packets at each other.
    Drop,
    /// An opcode other than QUERY: NOTIMP.
    NotImp,
    /// The header parses but the rest does not: FORMERR. The question is echoed when it parsed.
    FormErr { question_end: Option<usize> },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::Drop => f.write_str("not a query"),
            Malformed::NotImp => f.write_str("opcode not implemented"),
            Malformed::FormErr { .. } => f.write_str("malformed query"),
        }
    }
}

pub fn id(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[0], packet[1]])
}

pub fn set_id(packet: &mut [u8], id: u16) {
    packet[..2].copy_from_slice(&id.to_be_bytes());
}

pub fn rcode_of(packet: &[u8]) -> u16 {
    u16::from(packet[3] & 0x0f)
}

pub fn is_response(packet: &[u8]) -> bool {
    packet.len() >= HEADER_LEN && packet[2] & QR != 0
}

fn count(packet: &[u8], index: usize) -> usize {
    usize::from(u16::from_be_bytes([packet[4 + 2 * index], packet[5 + 2 * index]]))
}

fn set_count(packet: &mut [u8], index: usize, value: usize) {
    let v = u16::try_from(value).unwrap_or(u16::MAX);
    packet[4 + 2 * index..6 + 2 * index].copy_from_slice(&v.to_be_bytes());
}

fn get_u16(packet: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]))
}

/// Reads the question name at `start` into `lower` (lower-cased, wire form); returns the offset
/// after it. Compression is refused: a question's name can only point back into the header.
fn read_question_name(packet: &[u8], start: usize, lower: &mut [u8; MAX_NAME_LEN]) -> Option<(usize, usize)> {
    let mut at = start;
    let mut len = 0;
    loop {
        let label = usize::from(*packet.get(at)?);
        if label == 0 {
            if len + 1 > MAX_NAME_LEN {
                return None;
            }
            lower[len] = 0;
            return Some((at + 1, len + 1));
        }
        if label > MAX_LABEL_LEN || len + 1 + label + 1 > MAX_NAME_LEN {
            return None;
        }
        let bytes = packet.get(at + 1..at + 1 + label)?;
        lower[len] = label as u8;
        for (dst, src) in lower[len + 1..len + 1 + label].iter_mut().zip(bytes) {
            *dst = src.to_ascii_lowercase();
        }
        len += 1 + label;
        at += 1 + label;
    }
}

/// Skips a possibly compressed owner name; returns the offset after it and whether it is the
/// (uncompressed) root. Pointers are followed, so that a name with a pointer past the end, into
/// the header or in a loop is malformed: each must point before the labels it continues, which
/// ends every chain.
fn skip_name(packet: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut at = start;
    let mut segment = start;
    let mut end = None;
    let mut total = 0;
    loop {
        let label = *packet.get(at)?;
        match label {
            0 => return Some((end.unwrap_or(at + 1), at == start)),
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(l & 0x3f) << 8 | usize::from(*packet.get(at + 1)?);
                if target >= segment || target < HEADER_LEN {
                    return None;
                }
                end.get_or_insert(at + 2);
                segment = target;
                at = target;
            }
            l if usize::from(l) > MAX_LABEL_LEN => return None,
            l => {
                total += 1 + usize::from(l);
                if total >= MAX_NAME_LEN {
                    return None;
                }
                at += 1 + usize::from(l);
            }
        }
    }
}

/// Parses a query far enough to decide what to do with it, writing the lower-cased question
/// name into `lower`. Every later record is walked so that a misplaced or repeated OPT record
/// (RFC 6891 section 6.1.1) is caught here; the records' contents are not interpreted.
pub fn parse_query(packet: &[u8], lower: &mut [u8; MAX_NAME_LEN]) -> Result<Query, Malformed> {
    if packet.len() < HEADER_LEN || packet[2] & QR != 0 {
        return Err(Malformed::Drop);
    }
    if packet[2] & OPCODE_MASK != 0 {
        return Err(Malformed::NotImp);
    }
    if count(packet, 0) != 1 {
        return Err(Malformed::FormErr { question_end: None });
    }
    let formerr = Malformed::FormErr { question_end: None };
    let (name_end, name_len) = read_question_name(packet, HEADER_LEN, lower).ok_or(formerr)?;
    let qtype = get_u16(packet, name_end).ok_or(formerr)?;
    let qclass = get_u16(packet, name_end + 2).ok_or(formerr)?;
    let question_end = name_end + 4;
    let formerr = Malformed::FormErr { question_end: Some(question_end) };

    let non_additional = count(packet, 1) + count(packet, 2);
    let total = non_additional + count(packet, 3);
    let mut at = question_end;
    let mut edns = None;
    for index in 0..total {
        let (after_name, root) = skip_name(packet, at).ok_or(formerr)?;
        let rtype = get_u16(packet, after_name).ok_or(formerr)?;
        let rdlen = usize::from(get_u16(packet, after_name + 8).ok_or(formerr)?);
        let end = after_name + 10 + rdlen;
        if end > packet.len() {
            return Err(formerr);
        }
        if rtype == types::OPT {
            if index < non_additional || !root || edns.is_some() {
                return Err(formerr);
            }
            let class = get_u16(packet, after_name + 2).ok_or(formerr)?;
            let ttl = u32::from_be_bytes(packet[after_name + 4..after_name + 8].try_into().unwrap());
            edns = Some(Edns {
                payload: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & DO_BIT != 0,
                other_options: has_other_options(&packet[after_name + 10..end]),
            });
        }
        at = end;
    }
    Ok(Query { question_end, name_len, qtype, qclass, edns })
}

/// Whether an OPT record's RDATA holds an option other than COOKIE (10) and PADDING (12), whose
/// contents never change an answer, or does not parse as options.
fn has_other_options(mut rdata: &[u8]) -> bool {
    use types::{OPTION_COOKIE as COOKIE, OPTION_PADDING as PADDING};
    while !rdata.is_empty() {
        let (Some(code), Some(len)) = (get_u16(rdata, 0), get_u16(rdata, 2)) else { return true };
        let next = 4 + usize::from(len);
        if (code != COOKIE && code != PADDING) || next > rdata.len() {
            return true;
        }
        rdata = &rdata[next..];
    }
    false
}

/// One resource record of a message, as [`Records`] finds it.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// 1 answer, 2 authority, 3 additional.
    pub section: usize,
    pub rtype: u16,
    /// Where its 32-bit TTL is.
    pub ttl_at: usize,
    /// Where its RDATA starts and ends.
    pub rdata: (usize, usize),
}

/// The records after the question of a message that [`is_whole`] accepted, in order. Owner
/// names are stepped over, not followed: all a cache needs is where each TTL is.
pub struct Records<'a> {
    message: &'a [u8],
    at: usize,
    index: usize,
    counts: [usize; 3],
}

impl<'a> Records<'a> {
    pub fn new(message: &'a [u8], question_end: usize) -> Self {
        Self { message, at: question_end, index: 0, counts: [count(message, 1), count(message, 2), count(message, 3)] }
    }
}

impl Iterator for Records<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let section = match self.index {
            i if i < self.counts[0] => 1,
            i if i < self.counts[0] + self.counts[1] => 2,
            i if i < self.counts[0] + self.counts[1] + self.counts[2] => 3,
            _ => return None,
        };
        let after_name = step_over_name(self.message, self.at)?;
        let rtype = get_u16(self.message, after_name)?;
        let rdlen = usize::from(get_u16(self.message, after_name + 8)?);
        let end = after_name + 10 + rdlen;
        if end > self.message.len() {
            return None;
        }
        self.index += 1;
        self.at = end;
        Some(Record { section, rtype, ttl_at: after_name + 4, rdata: (after_name + 10, end) })
    }
}

pub fn get_u32(packet: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(packet.get(at..at + 4)?.try_into().ok()?))
}

pub fn set_u32(packet: &mut [u8], at: usize, value: u32) {
    packet[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// The header flags that change what an upstream answers (RD, CD, AD), in one byte.
pub fn answer_flags(packet: &[u8]) -> u8 {
    (packet[2] & RD) | (packet[3] & (CD | AD_FLAG))
}

/// Whether a message's header counts records in the answer or authority section, or more
/// additional records than `additional`: a query like that is not a plain question.
pub fn has_records_beyond(packet: &[u8], additional: usize) -> bool {
    count(packet, 1) != 0 || count(packet, 2) != 0 || count(packet, 3) != additional
}

/// Whether TC is set.
pub fn is_truncated(packet: &[u8]) -> bool {
    packet[2] & TC != 0
}

/// The number of answer records.
pub fn answer_count(packet: &[u8]) -> usize {
    count(packet, 1)
}

/// Appends our OPT record (RFC 6891): our payload size, version 0, the client's DO bit.
pub fn push_opt(out: &mut Vec<u8>, edns: &Edns, extended_rcode: u16) {
    let ttl: u32 = (u32::from(extended_rcode >> 4) << 24) | if edns.dnssec_ok { DO_BIT } else { 0 };
    out.push(0);
    out.extend_from_slice(&types::OPT.to_be_bytes());
    out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    let ar = count(out, 3) + 1;
    set_count(out, 3, ar);
}

/// Largest relayed answer a UDP client takes: the payload size it advertised (RFC 6891 section
/// 6.2.5), or 512 without EDNS. Upstreams size their answers by the client's OPT record, which
/// they get unchanged; one that ignores it must not make us send an oversized datagram.
pub fn relay_udp_limit(edns: Option<&Edns>) -> usize {
    edns.map_or(CLASSIC_UDP_PAYLOAD, |e| e.payload.max(CLASSIC_UDP_PAYLOAD)) as usize
}

/// Writes `reply` cut down to its header and question with TC set, plus our OPT record when the
/// client sent one: what a UDP client gets for an upstream answer larger than its buffer, so that
/// it retries over TCP.
pub fn write_truncated(reply: &[u8], question_end: usize, edns: Option<&Edns>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&reply[..question_end]);
    out[2] |= TC;
    for section in 1..4 {
        set_count(out, section, 0);
    }
    if let Some(e) = edns {
        push_opt(out, e, rcode_of(reply));
    }
}

/// Writes an answer with no records: the query's header and (when given) question, an rcode,
/// and an OPT record when the query had one. Used for errors, SERVFAIL and truncation alike.
pub fn write_empty_answer(
    packet: &[u8],
    question_end: Option<usize>,
    rcode: u16,
    edns: Option<&Edns>,
    truncated: bool,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&packet[..HEADER_LEN]);
    out[2] = QR | (packet[2] & (OPCODE_MASK | RD)) | if truncated { TC } else { 0 };
    out[3] = RA | (packet[3] & CD) | (rcode & 0x0f) as u8;
    set_count(out, 0, usize::from(question_end.is_some()));
    for section in 1..4 {
        set_count(out, section, 0);
    }
    if let Some(end) = question_end {
        out.extend_from_slice(&packet[HEADER_LEN..end]);
    }
    if let Some(e) = edns {
        push_opt(out, e, rcode);
    }
}

/// Writes the NOTIMP answer to an opcode other than QUERY: the ID, QR and the opcode, nothing else
/// (RFC 8906 section 3.1.3.1). RA, RD, CD and AD describe a query that was never processed, so
/// echoing them would claim recursion for a NOTIFY or an UPDATE; the sections are not read, so
/// none is echoed.
pub fn write_notimp(packet: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&packet[..2]);
    out.extend_from_slice(&[QR | (packet[2] & OPCODE_MASK), rcode::NOTIMP as u8, 0, 0, 0, 0, 0, 0, 0, 0]);
}

/// Writes a local answer from a pre-encoded template: the template's records under the client's
/// own ID, flags, question bytes (so the case of the name is echoed, as 0x20 clients expect) and
/// OPT record. Falls back to a truncated answer when it would exceed `limit`.
pub fn write_from_template(packet: &[u8], query: &Query, template: &[u8], limit: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(template);
    out[..2].copy_from_slice(&packet[..2]);
    out[2] = QR | AA | (packet[2] & RD);
    out[3] = RA | (packet[3] & CD) | (template[3] & 0x0f);
    out[HEADER_LEN..query.question_end].copy_from_slice(&packet[HEADER_LEN..query.question_end]);
    if let Some(e) = &query.edns {
        push_opt(out, e, rcode::NOERROR);
    }
    if out.len() > limit {
        let rcode = rcode_of(template);
        write_empty_answer(packet, Some(query.question_end), rcode, query.edns.as_ref(), true, out);
        out[2] |= AA;
    }
}

/// Writes an answer whose question differs from every template (a name below a local name):
/// header with `rcode` and AA, the client's question, then `authority`, one position-independent
/// record (no compression pointers).
pub fn write_with_authority(packet: &[u8], query: &Query, rcode: u16, authority: &[u8], out: &mut Vec<u8>) {
    write_empty_answer(packet, Some(query.question_end), rcode, None, false, out);
    out[2] |= AA;
    out.extend_from_slice(authority);
    set_count(out, 2, 1);
    if let Some(e) = &query.edns {
        push_opt(out, e, rcode);
    }
}

/// Where the name at `start` ends, without following its compression pointer: all that stepping
/// over a record needs. Every relayed answer goes through this, and its owner names are pointers
/// to the question, so this is a few comparisons per record where following them (as
/// [`skip_name`] must, to validate a query) would walk the question's name each time.
fn step_over_name(packet: &[u8], mut at: usize) -> Option<usize> {
    loop {
        match *packet.get(at)? {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return (at + 2 <= packet.len()).then_some(at + 2),
            l if l & 0xc0 != 0 => return None,
            l => at += 1 + usize::from(l),
        }
    }
}

/// Whether `reply`, whose question ends at `question_end` (see [`same_question`]), is a whole
/// message: every record its header counts lies within it. A cut-off reply (a broken upstream, a
/// forgery) is not an answer the client could parse. A truncated one (TC) counts as whole
/// whatever it holds, since the client retries over TCP anyway.
pub fn is_whole(reply: &[u8], question_end: usize) -> bool {
    if reply[2] & TC != 0 {
        return true;
    }
    let records = count(reply, 1) + count(reply, 2) + count(reply, 3);
    let mut at = question_end;
    for _ in 0..records {
        let Some(after_name) = step_over_name(reply, at) else { return false };
        let Some(rdlen) = get_u16(reply, after_name + 8) else { return false };
        at = after_name + 10 + usize::from(rdlen);
        if at > reply.len() {
            return false;
        }
    }
    true
}

/// Compares the question of `reply` with that of `query`: RFC 5452 section 9.1 accepts a reply
/// only for the question that was asked. Only the name's label bytes compare without regard to
/// case (resolvers may change it, RFC 4343); its length bytes, QTYPE and QCLASS must be equal
/// byte for byte, or TYPE65 (0x0041) would match TYPE97 (0x0061). `query`'s question is
/// uncompressed (`parse_query` refuses anything else), so a compressed reply question differs.
pub fn same_question(query: &[u8], question_end: usize, reply: &[u8]) -> bool {
    if reply.len() < question_end || count(reply, 0) != 1 {
        return false;
    }
    let (asked, got) = (&query[HEADER_LEN..question_end], &reply[HEADER_LEN..question_end]);
    // Upstreams echo the question as it was sent, in its case: one comparison settles most.
    if asked == got {
        return true;
    }
    let mut at = 0;
    loop {
        let label = usize::from(asked[at]);
        if got[at] != asked[at] {
            return false;
        }
        if label == 0 {
            return asked[at + 1..] == got[at + 1..];
        }
        if !asked[at + 1..at + 1 + label].eq_ignore_ascii_case(&got[at + 1..at + 1 + label]) {
            return false;
        }
        at += 1 + label;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns as HEdns, Message, Query as HQuery};
    use hickory_proto::rr::{Name, RecordType};

    fn query(name: &str, rtype: RecordType, edns: Option<HEdns>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.metadata.recursion_desired = true;
        m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), rtype));
        if let Some(e) = edns {
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_question_and_lowercases_name() {
        let mut lower = [0u8; MAX_NAME_LEN];
        let q = query("Knative-Local-Registry.", RecordType::AAAA, None);
        let parsed = parse_query(&q, &mut lower).unwrap();
        assert_eq!(parsed.qtype, types::AAAA);
        assert_eq!(&lower[..parsed.name_len], b"\x16knative-local-registry\x00");
        assert_eq!(parsed.question_end, q.len());
        assert_eq!(parsed.udp_limit(), 512);
    }

    #[test]
    fn reads_edns_payload_version_and_do_bit() {
        let mut e = HEdns::new();
        e.set_max_payload(4096);
        e.set_dnssec_ok(true);
        let q = query("example.org.", RecordType::A, Some(e));
        let parsed = parse_query(&q, &mut [0; MAX_NAME_LEN]).unwrap();
        let edns = parsed.edns.unwrap();
        assert_eq!((edns.payload, edns.version, edns.dnssec_ok), (4096, 0, true));
        assert_eq!(parsed.udp_limit(), usize::from(OUR_UDP_PAYLOAD));
    }

    #[test]
    fn classifies_malformed_packets() {
        let mut lower = [0u8; MAX_NAME_LEN];
        let good = query("a.example.", RecordType::A, None);
        assert_eq!(parse_query(&good[..5], &mut lower).unwrap_err(), Malformed::Drop);
        let mut response = good.clone();
        response[2] |= QR;
        assert_eq!(parse_query(&response, &mut lower).unwrap_err(), Malformed::Drop);
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        assert_eq!(parse_query(&notify, &mut lower).unwrap_err(), Malformed::NotImp);
        let cut = &good[..good.len() - 2];
        assert!(matches!(parse_query(cut, &mut lower), Err(Malformed::FormErr { .. })));
        let mut pointer = good[..HEADER_LEN].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&pointer, &mut lower), Err(Malformed::FormErr { .. })));
        let mut long_label = good[..HEADER_LEN].to_vec();
        long_label.push(64);
        long_label.extend_from_slice(&[b'a'; 64]);
        long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&long_label, &mut lower), Err(Malformed::FormErr { .. })));
        let mut long_name = good[..HEADER_LEN].to_vec();
        for _ in 0..5 {
            long_name.push(60);
            long_name.extend_from_slice(&[b'a'; 60]);
        }
        long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse_query(&long_name, &mut lower), Err(Malformed::FormErr { .. })));
    }

    #[test]
    fn follows_record_name_pointers_back_and_rejects_loops_and_pointers_past_the_end() {
        let with_additional = |owner: &[u8]| {
            let mut q = query("a.example.", RecordType::A, None);
            q.extend_from_slice(owner);
            q.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
            set_count(&mut q, 3, 1);
            q
        };
        let at = query("a.example.", RecordType::A, None).len() as u8;
        let parse = |q: &[u8]| parse_query(q, &mut [0; MAX_NAME_LEN]);
        assert!(parse(&with_additional(&[0xc0, 12])).is_ok(), "a pointer to the question name");
        assert!(parse(&with_additional(&[1, b'x', 0xc0, 12])).is_ok(), "a label, then a pointer");
        for (what, owner) in [
            ("past the end", vec![0xc0, 0xff]),
            ("to itself", vec![0xc0, at]),
            ("into its own labels", vec![1, b'x', 0xc0, at]),
            ("to the header", vec![0xc0, 2]),
        ] {
            let err = parse(&with_additional(&owner)).unwrap_err();
            assert!(matches!(err, Malformed::FormErr { question_end: Some(_) }), "pointer {what}");
        }
    }

    #[test]
    fn rejects_two_opt_records() {
        let q = query("a.example.", RecordType::A, Some(HEdns::new()));
        let opt = q[q.len() - OPT_RR_LEN..].to_vec();
        let mut twice = q.clone();
        twice.extend_from_slice(&opt);
        set_count(&mut twice, 3, 2);
        let err = parse_query(&twice, &mut [0; MAX_NAME_LEN]).unwrap_err();
        assert!(matches!(err, Malformed::FormErr { question_end: Some(_) }));
    }

    #[test]
    fn a_reply_cut_inside_a_record_is_not_whole_unless_truncated() {
        let q = query("a.example.", RecordType::A, None);
        let question_end = parse_query(&q, &mut [0; MAX_NAME_LEN]).unwrap().question_end;
        let mut whole = q.clone();
        whole[2] |= QR;
        set_count(&mut whole, 1, 1);
        whole.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        assert!(is_whole(&whole, question_end));
        let mut trailing = whole.clone();
        trailing.push(0);
        assert!(is_whole(&trailing, question_end), "bytes after the last record are not our business");
        for cut in [whole.len() - 2, whole.len() - 5, question_end + 3] {
            assert!(!is_whole(&whole[..cut], question_end), "cut at {cut}");
        }
        let mut truncated = whole[..whole.len() - 2].to_vec();
        truncated[2] |= TC;
        assert!(is_whole(&truncated, question_end), "TC: the client retries over TCP");
    }

    #[test]
    fn an_oversized_relayed_answer_is_cut_to_header_and_question_with_tc() {
        let q = query("a.example.", RecordType::A, None);
        let question_end = parse_query(&q, &mut [0; MAX_NAME_LEN]).unwrap().question_end;
        let mut reply = q.clone();
        reply[2] |= QR | AA;
        set_count(&mut reply, 1, 1);
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        let edns = Edns { payload: 1232, version: 0, dnssec_ok: true, other_options: false };
        let mut out = Vec::new();
        write_truncated(&reply, question_end, Some(&edns), &mut out);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.metadata.truncation && m.metadata.authoritative);
        assert_eq!((m.queries.len(), m.answers.len()), (1, 0));
        assert!(m.edns.as_ref().unwrap().flags().dnssec_ok);
        write_truncated(&reply, question_end, None, &mut out);
        assert_eq!(out.len(), question_end, "no OPT for a client without EDNS");
        assert_eq!(relay_udp_limit(None), 512);
        assert_eq!(relay_udp_limit(Some(&Edns { payload: 100, ..edns })), 512);
        assert_eq!(relay_udp_limit(Some(&Edns { payload: 4096, ..edns })), 4096);
    }

    #[test]
    fn a_question_matches_in_any_name_case_but_never_across_types_or_classes() {
        let q = query("a.example.", RecordType::from(0x41), None);
        let end = parse_query(&q, &mut [0; MAX_NAME_LEN]).unwrap().question_end;
        let mut reply = q.clone();
        reply[2] |= QR;
        assert!(same_question(&q, end, &reply));
        reply[HEADER_LEN + 1] = b'A';
        reply[HEADER_LEN + 3] = b'E';
        assert!(same_question(&q, end, &reply), "0x20 case changes in the labels");
        // Each byte of QTYPE and QCLASS, flipped in bit 0x20 alone (0x41 -> 0x61 is TYPE65 -> TYPE97).
        for at in end - 4..end {
            let mut other = reply.clone();
            other[at] ^= 0x20;
            assert!(!same_question(&q, end, &other), "byte {at} differs only in 0x20");
        }
        let mut letter_type = q.clone();
        letter_type[end - 3] = b'W';
        letter_type[end - 1] = b'D';
        let mut reply = letter_type.clone();
        reply[end - 3] = b'w';
        reply[end - 1] = b'd';
        assert!(!same_question(&letter_type, end, &reply), "QTYPE/QCLASS bytes that look like letters");
        let mut other_length = q.clone();
        other_length[HEADER_LEN] = 0x21;
        assert!(!same_question(&q, end, &other_length), "a length byte is never case-folded");
    }

    #[test]
    fn empty_answer_carries_extended_rcode_in_opt() {
        let q = query("a.example.", RecordType::A, Some(HEdns::new()));
        let parsed = parse_query(&q, &mut [0; MAX_NAME_LEN]).unwrap();
        let mut out = Vec::new();
        let edns = parsed.edns;
        write_empty_answer(&q, Some(parsed.question_end), rcode::BADVERS, edns.as_ref(), false, &mut out);
        let m = Message::from_vec(&out).unwrap();
        // BADVERS and BADSIG share code 16; hickory names it BADSIG.
        assert_eq!(u16::from(m.metadata.response_code), rcode::BADVERS);
        assert_eq!(m.metadata.id, 0x1234);
    }

    #[test]
    fn notimp_carries_only_id_qr_opcode_and_rcode() {
        let mut q = query("a.example.", RecordType::A, Some(HEdns::new()));
        // Every flag a client can set: RD (from `query`), AA, TC, CD, AD and the Z bit.
        q[2] |= AA | TC;
        q[3] |= 0x70;
        for opcode in [1u8, 2, 4, 5, 15] {
            q[2] = (q[2] & !OPCODE_MASK) | opcode << 3;
            let mut out = Vec::new();
            write_notimp(&q, &mut out);
            assert_eq!(out[..2], [0x12, 0x34], "opcode {opcode}: ID");
            assert_eq!(out[2], QR | opcode << 3, "opcode {opcode}: QR and the opcode, no AA, TC or RD");
            assert_eq!(out[3], rcode::NOTIMP as u8, "opcode {opcode}: NOTIMP, no RA, Z, AD or CD");
            assert_eq!(out[4..], [0; 8], "opcode {opcode}: no section echoed");
        }
    }
}
