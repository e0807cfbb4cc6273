//! The cache key: everything in a query that can change the upstream's answer, and nothing else.
//!
//! That is the question (name lower-cased, so that 0x20-randomized queries share an entry; QTYPE
//! and QCLASS), the header flags RD, CD and AD, and the OPT record's presence, version and DO bit.
//! The client's UDP payload size is left out: an entry is only served to a client whose buffer
//! holds it (see `Cache::lookup`). Queries whose answer may depend on more (EDNS options other
//! than COOKIE and PADDING, such as ECS or NSID; records beyond the question and one OPT) are not
//! cached at all. The transport is not in the key: answers that came over UDP and TCP share entries.

use crate::dns::wire::{self, Edns, HEADER_LEN, MAX_NAME_LEN};

/// Longest key: a flags byte, the EDNS byte, the question (name, type, class).
pub const MAX_KEY_LEN: usize = 2 + MAX_NAME_LEN + 4;

/// A key built on the stack: looking one up allocates nothing.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; MAX_KEY_LEN],
    len: usize,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", self.as_bytes())
    }
}

impl Key {
    /// The key of `packet`, a well-formed query whose question ends at `question_end`, or `None`
    /// when its answer is not to be cached.
    pub fn of(packet: &[u8], question_end: usize, edns: Option<&Edns>) -> Option<Key> {
        if edns.is_some_and(|e| e.other_options) || wire::has_records_beyond(packet, usize::from(edns.is_some())) {
            return None;
        }
        let mut key = Key { bytes: [0; MAX_KEY_LEN], len: 2 + question_end - HEADER_LEN };
        key.bytes[0] = wire::answer_flags(packet);
        key.bytes[1] = match edns {
            None => 0,
            Some(e) => 0x80 | u8::from(e.dnssec_ok) << 6 | (e.version & 0x3f),
        };
        lower_question(&packet[HEADER_LEN..question_end], &mut key.bytes[2..key.len]);
        Some(key)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The wire-form name a key holds, lower-cased (for flushing one name).
pub fn name_of(key: &[u8]) -> &[u8] {
    &key[2..key.len() - 4]
}

/// Copies a question (uncompressed, as `parse_query` accepted it), lower-casing the label bytes
/// only: length bytes, QTYPE and QCLASS are copied as they are.
fn lower_question(question: &[u8], out: &mut [u8]) {
    out.copy_from_slice(question);
    let mut at = 0;
    while out[at] != 0 {
        let label = usize::from(out[at]);
        out[at + 1..at + 1 + label].make_ascii_lowercase();
        at += 1 + label;
    }
}

/// `name` (any case, as typed: `Example.ORG`) in lower-cased wire form, for flushing it.
pub fn wire_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        if label.len() > 63 {
            return None;
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    (out.len() <= MAX_NAME_LEN).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, flags: [u8; 2], opt: Option<&[u8]>) -> (Vec<u8>, usize, Option<Edns>) {
        let mut q = vec![0x12, 0x34, flags[0], flags[1], 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())];
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        let end = q.len();
        if let Some(opt) = opt {
            q.extend_from_slice(opt);
        }
        let parsed = wire::parse_query(&q, &mut [0; MAX_NAME_LEN]).unwrap();
        (q, end, parsed.edns)
    }

    fn key(name: &[u8], qtype: u16, flags: [u8; 2], opt: Option<&[u8]>) -> Option<Vec<u8>> {
        let (q, end, edns) = query(name, qtype, flags, opt);
        Key::of(&q, end, edns.as_ref()).map(|k| k.as_bytes().to_vec())
    }

    const OPT: &[u8] = &[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
    const OPT_DO: &[u8] = &[0, 0, 41, 4, 0xd0, 0, 0, 0x80, 0, 0, 0];

    #[test]
    fn case_and_id_share_a_key_and_everything_that_changes_an_answer_does_not() {
        let base = key(b"\x07example\x03org\x00", 1, [1, 0], None).unwrap();
        assert_eq!(key(b"\x07ExAmPlE\x03ORG\x00", 1, [1, 0], None).unwrap(), base, "0x20 case");
        assert_eq!(wire_name("Example.ORG.").unwrap(), name_of(&base));
        let others = [
            key(b"\x07example\x03org\x00", 28, [1, 0], None),
            key(b"\x07example\x03org\x00", 1 ^ 0x20 << 8, [1, 0], None),
            key(b"\x07example\x03org\x00", 1, [0, 0], None),
            key(b"\x07example\x03org\x00", 1, [1, 0x10], None),
            key(b"\x07example\x03org\x00", 1, [1, 0x20], None),
            key(b"\x07example\x03org\x00", 1, [1, 0], Some(OPT)),
            key(b"\x07example\x03org\x00", 1, [1, 0], Some(OPT_DO)),
            key(b"\x07example\x03net\x00", 1, [1, 0], None),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(other.as_ref().unwrap(), &base, "variant {i}");
        }
    }

    #[test]
    fn cookies_and_padding_do_not_matter_other_options_make_a_query_uncacheable() {
        let plain = key(b"\x01a\x00", 1, [1, 0], Some(OPT)).unwrap();
        let mut cookie = OPT[..9].to_vec();
        cookie.extend_from_slice(&[0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(key(b"\x01a\x00", 1, [1, 0], Some(&cookie)).unwrap(), plain, "COOKIE");
        let mut nsid = OPT[..9].to_vec();
        nsid.extend_from_slice(&[0, 4, 0, 3, 0, 0]);
        assert_eq!(key(b"\x01a\x00", 1, [1, 0], Some(&nsid)), None, "NSID");
    }
}
