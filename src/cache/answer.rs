//! A stored answer: the upstream's message as it was relayed, with where its TTLs are, so that a
//! hit is a copy and a few patches, never a parse.

use std::time::Duration;

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

/// How long answers may live: the caps of `--cache-max-ttl` and `--cache-max-negative-ttl`.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub max_ttl: Duration,
    pub max_negative_ttl: Duration,
}

/// An answer ready to be served: its wire bytes with every TTL already capped, its lifetime, and
/// the offsets of the TTLs a hit ages.
#[derive(Debug)]
pub struct Stored {
    pub wire: Box<[u8]>,
    pub ttl_at: Box<[u16]>,
    /// Seconds the entry is fresh for.
    pub ttl: u32,
    pub kind: Kind,
    pub question_end: u16,
}

impl Stored {
    /// Judges an upstream answer the relay accepted (same ID, question and source, whole): it is
    /// stored unless it is truncated, an error other than NXDOMAIN, negative without an SOA, or
    /// has a TTL of 0. TTLs are capped here, once, so a hit only subtracts the age.
    pub fn answer(reply: &[u8], question_end: usize, lifetimes: Lifetimes) -> Option<Stored> {
        if wire::is_truncated(reply) {
            return None;
        }
        let kind = match wire::rcode_of(reply) {
            rcode::NOERROR if wire::answer_count(reply) > 0 => Kind::Positive,
            rcode::NOERROR | rcode::NXDOMAIN => Kind::Negative,
            _ => return None,
        };
        let mut wire = reply.to_vec().into_boxed_slice();
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
            Kind::Positive => (lowest, lifetimes.max_ttl),
            _ => (negative_ttl?, lifetimes.max_negative_ttl),
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
