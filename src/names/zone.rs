//! One local name as a zone of its own, and its answers pre-encoded.
//!
//! The authoritative behaviour (AA, NODATA with the SOA in authority per RFC 2308, the SOA and NS
//! of the apex) is hickory-server's: each name becomes an `InMemoryZoneHandler` in a `Catalog`,
//! and the catalog's answer to each kind of question is encoded once, when the name's data
//! changes. The hot path then copies those bytes and patches only the ID, flags, the question
//! (for the client's case) and the OPT record: one definition of an answer, and no per-query
//! encoding.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};
use hickory_proto::op::{Message, Query as HQuery};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use hickory_server::net::NetError;
use hickory_server::net::runtime::{TokioRuntimeProvider, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, MessageResponse, ZoneType};

use crate::dns::wire;

/// Negative-caching TTL of a name that exists but has no address right now (a Service scaled to
/// zero): short, so that clients see the endpoints as soon as they come back.
pub const EMPTY_NAME_NEGATIVE_TTL: u32 = 1;

/// SOA timers of the synthesized zones. Nothing transfers these zones; the values are the
/// conventional ones (RFC 1912 section 2.2) so that zone checkers find nothing odd.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;

/// Settings shared by every local zone.
#[derive(Debug, Clone)]
pub struct ZoneSettings {
    /// TTL of answers and SOA minimum.
    pub ttl: u32,
    /// The server's own name: the NS of every zone and the SOA MNAME.
    pub ns_name: Name,
    /// SOA serial; bumped whenever the table is rebuilt.
    pub serial: u32,
    /// At most this many A (or AAAA) records per answer (`--max-answers`).
    pub max_answers: usize,
}

/// The pre-encoded answers of one name that has data.
///
/// A and AAAA answers come in rotation windows: a name with more addresses of a family than
/// `max_answers` answers `max_answers` of them at a time, the next window for the next query, so
/// a Service with thousands of endpoints gets small answers that fit UDP and clients spread over
/// all endpoints; a name with a few addresses rotates their order, as CoreDNS's `loadbalance`. A
/// name with one address has one window and costs nothing per query.
#[derive(Debug)]
pub struct Answers {
    a: Vec<Box<[u8]>>,
    aaaa: Vec<Box<[u8]>>,
    soa: Box<[u8]>,
    ns: Box<[u8]>,
    /// NODATA for any other type (the question's type is patched in per query).
    nodata: Box<[u8]>,
    /// An ANY query gets the addresses (RFC 8482: a minimal subset): A when there are any.
    any_is_a: bool,
    /// The zone's SOA record with uncompressed names, for NXDOMAIN below the name, whose
    /// question differs from every template.
    pub soa_record: Box<[u8]>,
    /// Round-robin position over the windows.
    next: AtomicUsize,
}

impl Answers {
    /// Picks the template for a query type.
    pub fn for_type(&self, qtype: u16) -> &[u8] {
        match qtype {
            wire::types::A => self.rotate(&self.a),
            wire::types::AAAA => self.rotate(&self.aaaa),
            wire::types::ANY if self.any_is_a => self.rotate(&self.a),
            wire::types::ANY => self.rotate(&self.aaaa),
            wire::types::SOA => &self.soa,
            wire::types::NS => &self.ns,
            _ => &self.nodata,
        }
    }

    fn rotate<'a>(&self, windows: &'a [Box<[u8]>]) -> &'a [u8] {
        match windows {
            [only] => only,
            _ => &windows[self.next.fetch_add(1, Ordering::Relaxed) % windows.len()],
        }
    }

    /// Builds the answers of `apex` with `addresses` (possibly none: NODATA with a short TTL).
    pub async fn build(apex: &Name, addresses: &[IpAddr], settings: &ZoneSettings) -> anyhow::Result<Self> {
        let negative_ttl = if addresses.is_empty() { EMPTY_NAME_NEGATIVE_TTL } else { settings.ttl };
        let soa = Record::from_rdata(
            apex.clone(),
            negative_ttl,
            RData::SOA(SOA::new(
                settings.ns_name.clone(),
                Name::from_ascii("hostmaster")?.append_domain(apex)?,
                settings.serial,
                SOA_REFRESH,
                SOA_RETRY,
                SOA_EXPIRE,
                negative_ttl,
            )),
        );
        let ns = Record::from_rdata(apex.clone(), settings.ttl, RData::NS(NS(settings.ns_name.clone())));
        let v4: Vec<IpAddr> = addresses.iter().copied().filter(IpAddr::is_ipv4).collect();
        let v6: Vec<IpAddr> = addresses.iter().copied().filter(IpAddr::is_ipv6).collect();
        let windows_v4 = windows(&v4, settings.max_answers);
        let windows_v6 = windows(&v6, settings.max_answers);

        // Zone i holds the i-th window of each family; the catalog answers each window's question.
        let zone = |i: usize| {
            let mut records = vec![soa.clone(), ns.clone()];
            for ip in windows_v4[i % windows_v4.len()].iter().chain(&windows_v6[i % windows_v6.len()]) {
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                records.push(Record::from_rdata(apex.clone(), settings.ttl, rdata));
            }
            catalog_for(apex, records, settings.serial)
        };
        let (mut a, mut aaaa) = (Vec::with_capacity(windows_v4.len()), Vec::with_capacity(windows_v6.len()));
        for i in 0..windows_v4.len().max(windows_v6.len()) {
            let catalog = zone(i)?;
            if i < windows_v4.len() {
                a.push(encode_answer(&catalog, apex, RecordType::A).await?);
            }
            if i < windows_v6.len() {
                aaaa.push(encode_answer(&catalog, apex, RecordType::AAAA).await?);
            }
        }
        let catalog = zone(0)?;
        Ok(Self {
            a,
            aaaa,
            soa: encode_answer(&catalog, apex, RecordType::SOA).await?,
            ns: encode_answer(&catalog, apex, RecordType::NS).await?,
            nodata: encode_answer(&catalog, apex, RecordType::TXT).await?,
            any_is_a: !v4.is_empty() || v6.is_empty(),
            soa_record: encode_uncompressed(&soa)?,
            next: AtomicUsize::new(0),
        })
    }
}

/// The rotation windows of one family's addresses: with `max` or fewer, every rotation of the
/// list; with more, consecutive runs of `max` (wrapping), so every address is in some window.
/// Never empty: no addresses make one empty window (NODATA).
fn windows(addresses: &[IpAddr], max: usize) -> Vec<Vec<IpAddr>> {
    let n = addresses.len();
    if n <= 1 {
        return vec![addresses.to_vec()];
    }
    let (count, step, len) = if n <= max { (n, 1, n) } else { (n.div_ceil(max), max, max) };
    (0..count).map(|w| (0..len).map(|j| addresses[(w * step + j) % n]).collect()).collect()
}

fn catalog_for(apex: &Name, records: Vec<Record>, serial: u32) -> anyhow::Result<Catalog> {
    let mut sets: BTreeMap<RrKey, RecordSet> = BTreeMap::new();
    for record in records {
        let key = RrKey::new(LowerName::from(&record.name), record.record_type());
        sets.entry(key)
            .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), serial))
            .insert(record, serial);
    }
    let handler =
        InMemoryZoneHandler::<TokioRuntimeProvider>::new(apex.clone(), sets, ZoneType::Primary, AxfrPolicy::Deny)
            .map_err(|e| anyhow!("zone {apex}: {e}"))?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(apex), vec![Arc::new(handler)]);
    Ok(catalog)
}

/// Asks the catalog `apex qtype` and returns its encoded answer, checked to carry the question
/// exactly as asked (the hot path overwrites those bytes with the client's).
async fn encode_answer(catalog: &Catalog, apex: &Name, qtype: RecordType) -> anyhow::Result<Box<[u8]>> {
    let mut query = Message::query();
    query.add_query(HQuery::query(apex.clone(), qtype));
    let query = query.to_vec()?;
    let request = Request::from_bytes(query.clone(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), Protocol::Udp)
        .context("encoding a template query")?;
    let capture = Capture::default();
    catalog.handle_request::<_, TokioTime>(&request, capture.clone()).await;
    let answer = std::mem::take(&mut *capture.0.lock().unwrap());
    // hickory-server writes each owner name in full; re-encoding compresses them into pointers
    // to the question, which is what lets many addresses fit a 512-byte answer and makes the
    // owner names echo the client's case like the question does.
    let answer = Message::from_vec(&answer)?.to_vec()?;
    if answer.len() < query.len() || answer[wire::HEADER_LEN..query.len()] != query[wire::HEADER_LEN..] {
        bail!("the answer to {apex} {qtype} does not echo its question");
    }
    Ok(answer.into_boxed_slice())
}

fn encode_uncompressed(record: &Record) -> anyhow::Result<Box<[u8]>> {
    let mut bytes = Vec::new();
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    record.emit(&mut encoder)?;
    Ok(bytes.into_boxed_slice())
}

/// A `ResponseHandler` that keeps the encoded response instead of sending it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let info = response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
        *self.0.lock().unwrap() = bytes;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::ResponseCode;

    fn settings() -> ZoneSettings {
        ZoneSettings { ttl: 5, ns_name: Name::from_ascii("node-1.").unwrap(), serial: 7, max_answers: 16 }
    }

    #[tokio::test]
    async fn answers_are_authoritative_and_negative_answers_carry_the_soa() {
        let apex = Name::from_ascii("knative-local-registry.").unwrap();
        let answers = Answers::build(&apex, &["10.0.0.10".parse().unwrap()], &settings()).await.unwrap();

        let a = Message::from_vec(answers.for_type(wire::types::A)).unwrap();
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers.len(), 1);
        let question_end = wire::HEADER_LEN + apex.len() + 1 + 4;
        assert_eq!(
            &answers.for_type(wire::types::A)[question_end..question_end + 2],
            &[0xc0, 0x0c],
            "owner points to the question"
        );
        assert_eq!(a.answers[0].ttl, 5);

        let aaaa = Message::from_vec(answers.for_type(wire::types::AAAA)).unwrap();
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        assert_eq!(aaaa.authorities[0].record_type(), RecordType::SOA);

        let soa = Message::from_vec(answers.for_type(wire::types::SOA)).unwrap();
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let ns = Message::from_vec(answers.for_type(wire::types::NS)).unwrap();
        assert_eq!(ns.answers[0].data, RData::NS(NS(settings().ns_name)));
    }

    #[test]
    fn windows_cover_every_address_and_rotate() {
        let ips: Vec<IpAddr> = (1..=5).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let w = windows(&ips, 2);
        assert_eq!(w.len(), 3);
        assert!(w.iter().all(|w| w.len() == 2));
        assert_eq!(w[2], [ips[4], ips[0]], "the last window wraps");
        let few = windows(&ips[..3], 16);
        assert_eq!(few, [vec![ips[0], ips[1], ips[2]], vec![ips[1], ips[2], ips[0]], vec![ips[2], ips[0], ips[1]]]);
        assert_eq!(windows(&[], 16), [Vec::<IpAddr>::new()]);
    }

    #[tokio::test]
    async fn many_addresses_answer_a_capped_window_at_a_time_in_turn() {
        let apex = Name::from_ascii("big.").unwrap();
        let ips: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([10, 0, 1, i])).collect();
        let answers = Answers::build(&apex, &ips, &settings()).await.unwrap();
        let first = Message::from_vec(answers.for_type(wire::types::A)).unwrap();
        let second = Message::from_vec(answers.for_type(wire::types::A)).unwrap();
        assert_eq!((first.answers.len(), second.answers.len()), (16, 16));
        assert_ne!(first.answers[0].data, second.answers[0].data);
        let single = Answers::build(&apex, &ips[..1], &settings()).await.unwrap();
        assert!(std::ptr::eq(single.for_type(wire::types::A), single.for_type(wire::types::A)));
    }

    #[tokio::test]
    async fn a_name_without_addresses_gets_nodata_with_a_short_ttl() {
        let apex = Name::from_ascii("registry.example.").unwrap();
        let answers = Answers::build(&apex, &[], &settings()).await.unwrap();
        let a = Message::from_vec(answers.for_type(wire::types::A)).unwrap();
        assert!(a.answers.is_empty());
        assert_eq!(a.authorities[0].ttl, EMPTY_NAME_NEGATIVE_TTL);
    }
}
