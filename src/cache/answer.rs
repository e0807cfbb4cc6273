//! A stored answer: the upstream's message as it was relayed, with where its TTLs are, so that a
//! hit is a copy and a few patches, never a parse.

use std::time::Duration;

use super::CachePolicy;
use crate::dns::wire::{self, HEADER_LEN, rcode, types};

/// What kind of answer an entry holds: it decides its lifetime and its eviction pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Records for the question (NOERROR with answers).
    Positive,
    /// NXDOMAIN, or NODATA (NOERROR without answers), with an SOA to bound it (RFC 2308).
    Negative,
    /// Our SERVFAIL when no upstream answered, kept a few seconds (RFC 9520).
    Failure,
}

/// An answer ready to be served: its wire bytes with every TTL already capped, its lifetime, and
/// the offsets of the TTLs a hit ages.
#[derive(Debug)]
pub struct Stored {
    wire: Box<[u8]>,
    ttl_at: Box<[u16]>,
    /// Seconds the entry is fresh for.
    ttl: u32,
    kind: Kind,
    question_end: u16,
}

impl Stored {
    /// Judges an upstream answer the forwarder accepted (same ID, question and source, whole): it is
    /// stored unless it is truncated, an error other than NXDOMAIN, negative without an SOA, or
    /// has a TTL of 0. TTLs are capped here, once (`--cache-max-ttl`, `--cache-max-negative-ttl`),
    /// so a hit only subtracts the age.
    pub fn answer(reply: &[u8], question_end: usize, policy: &CachePolicy) -> Option<Stored> {
        if wire::is_truncated(reply) {
            return None;
        }
        let kind = match wire::rcode_of(reply) {
            rcode::NOERROR if wire::answer_count(reply) > 0 => Kind::Positive,
            rcode::NOERROR | rcode::NXDOMAIN => Kind::Negative,
            _ => return None,
        };
        let reply = &shareable(reply, question_end);
        let mut wire = reply.clone().into_boxed_slice();
        let mut ttl_at = Vec::new();
        let mut lowest = u32::MAX;
        let mut negative_ttl = None;
        for record in wire::Records::new(reply, question_end) {
            if record.rtype == types::OPT {
                continue;
            }
            let ttl = wire::get_u32(reply, record.ttl_at)?;
            ttl_at.push(u16::try_from(record.ttl_at).ok()?);
            lowest = lowest.min(ttl);
            if kind == Kind::Negative && record.section == 2 && record.rtype == types::SOA {
                // RFC 2308 section 5: the lesser of the SOA's TTL and its MINIMUM field.
                let minimum = wire::get_u32(reply, record.rdata.1.checked_sub(4)?)?;
                negative_ttl = Some(ttl.min(minimum));
            }
        }
        let (ttl, cap) = match kind {
            Kind::Positive => (lowest, policy.max_ttl),
            _ => (negative_ttl?, policy.max_negative_ttl),
        };
        let cap = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX);
        let ttl = ttl.min(cap);
        if ttl == 0 {
            return None;
        }
        for &at in &ttl_at {
            let at = usize::from(at);
            let capped = wire::get_u32(&wire, at)?.min(cap);
            wire::set_u32(&mut wire, at, capped);
        }
        wire::set_id(&mut wire, 0);
        Some(Stored { wire, ttl_at: ttl_at.into(), ttl, kind, question_end: question_end as u16 })
    }

    /// Our SERVFAIL for a query no upstream answered, kept for `ttl`.
    pub fn failure(servfail: &[u8], question_end: usize, ttl: Duration) -> Stored {
        Stored {
            wire: servfail.into(),
            ttl_at: Box::default(),
            ttl: ttl.as_secs().max(1) as u32,
            kind: Kind::Failure,
            question_end: question_end as u16,
        }
    }

    /// Seconds the answer is fresh for.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its size in bytes, as a client receives it.
    pub fn size(&self) -> usize {
        self.wire.len()
    }

    /// The heap bytes it holds: the message and its TTL offsets.
    pub fn heap_bytes(&self) -> (usize, usize) {
        (self.wire.len(), self.ttl_at.len() * size_of::<u16>())
    }

    /// Writes this answer for a client: its ID and its question bytes (the case it asked in),
    /// every TTL less `age` seconds, or every TTL set to `stale_ttl` for a stale answer.
    pub fn write(&self, query: &[u8], age: u32, stale_ttl: Option<u32>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[..2].copy_from_slice(&query[..2]);
        let question_end = usize::from(self.question_end);
        out[HEADER_LEN..question_end].copy_from_slice(&query[HEADER_LEN..question_end]);
        for &at in &self.ttl_at {
            let at = usize::from(at);
            let ttl = stale_ttl
                .unwrap_or_else(|| u32::from_be_bytes(out[at..at + 4].try_into().unwrap()).saturating_sub(age));
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
    }
}

/// `reply` as any client asking the same question may get it: without the COOKIE option of its OPT
/// record. The server cookie in it answers the first client's cookie and would be wrong for every
/// other client a copy goes to, from the cache or parked on the same upstream query (RFC 7873; dig
/// warns of a mismatch, and a client that enforces cookies drops the answer). An OPT record whose
/// options do not parse is left as it is.
pub fn shareable(reply: &[u8], question_end: usize) -> Vec<u8> {
    let Some(opt) = wire::Records::new(reply, question_end).find(|r| r.rtype == types::OPT) else {
        return reply.to_vec();
    };
    let (start, end) = opt.rdata;
    let mut kept = Vec::with_capacity(end - start);
    let mut at = start;
    while at + 4 <= end {
        let code = u16::from_be_bytes([reply[at], reply[at + 1]]);
        let next = at + 4 + usize::from(u16::from_be_bytes([reply[at + 2], reply[at + 3]]));
        if next > end {
            break;
        }
        if code != types::OPTION_COOKIE {
            kept.extend_from_slice(&reply[at..next]);
        }
        at = next;
    }
    if at != end || kept.len() == end - start {
        return reply.to_vec();
    }
    let mut out = Vec::with_capacity(reply.len());
    out.extend_from_slice(&reply[..start - 2]);
    out.extend_from_slice(&(kept.len() as u16).to_be_bytes());
    out.extend_from_slice(&kept);
    out.extend_from_slice(&reply[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_answer_keeps_every_option_but_the_cookie() {
        // a. A 192.0.2.1, then OPT with a COOKIE (client 8 + server 8 bytes) and an NSID option.
        let mut reply = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1, 1, b'a', 0, 0, 1, 0, 1];
        let question_end = reply.len();
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        reply.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 26]);
        reply.extend_from_slice(&[0, 10, 0, 16]);
        reply.extend_from_slice(&[7; 16]);
        reply.extend_from_slice(&[0, 3, 0, 2, b'n', b's']);
        let stored = Stored::answer(&reply, question_end, &CachePolicy::default()).unwrap();
        assert_eq!(stored.wire.len(), reply.len() - 20);
        assert_eq!(stored.wire[stored.wire.len() - 8..], [0, 6, 0, 3, 0, 2, b'n', b's'], "RDLENGTH 6: NSID alone");
        assert_eq!((stored.ttl, stored.ttl_at.len()), (60, 1));
        let mut cut = reply.clone();
        cut.truncate(cut.len() - 1);
        cut[question_end + 16 + 10] = 25;
        assert_eq!(shareable(&cut, question_end), cut, "options that do not parse stay as they are");
    }

    /// `nx.a.` NXDOMAIN with the zone's SOA in the authority section: its TTL `soa_ttl`, its
    /// MINIMUM `minimum`.
    fn nxdomain(soa_ttl: u32, minimum: u32) -> (Vec<u8>, usize) {
        let mut reply = vec![0x12, 0x34, 0x81, 0x83, 0, 1, 0, 0, 0, 1, 0, 0, 2, b'n', b'x', 1, b'a', 0, 0, 1, 0, 1];
        let question_end = reply.len();
        reply.extend_from_slice(&[0xc0, 15, 0, 6, 0, 1]);
        reply.extend_from_slice(&soa_ttl.to_be_bytes());
        reply.extend_from_slice(&[0, 24, 0xc0, 15, 0xc0, 15, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]);
        reply.extend_from_slice(&minimum.to_be_bytes());
        (reply, question_end)
    }

    /// RFC 2308 section 5: a negative answer lives for the lesser of its SOA's TTL and MINIMUM,
    /// within `--cache-max-negative-ttl`, and is not cached without an SOA.
    #[test]
    fn a_negative_answer_lives_for_the_lesser_of_the_soa_s_ttl_and_minimum() {
        let policy = CachePolicy::default();
        for (soa_ttl, minimum, expected) in [(60, 3, 3), (2, 3600, 2), (3600, 3600, 300), (60, 0, 0)] {
            let (reply, question_end) = nxdomain(soa_ttl, minimum);
            let stored = Stored::answer(&reply, question_end, &policy);
            assert_eq!(stored.as_ref().map(Stored::ttl).unwrap_or(0), expected, "SOA TTL {soa_ttl}, MINIMUM {minimum}");
            if let Some(stored) = stored {
                assert_eq!(stored.kind(), Kind::Negative);
            }
        }
        let (mut reply, question_end) = nxdomain(60, 3);
        reply.truncate(question_end);
        reply[9] = 0;
        assert!(Stored::answer(&reply, question_end, &policy).is_none(), "no SOA, not cached");
    }
}
