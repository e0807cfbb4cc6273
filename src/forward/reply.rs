//! What an upstream's reply means for the query it claims to answer: the one acceptance rule for
//! replies over UDP and TCP, kept apart from sockets and state so that it can be tested and fuzzed
//! alone.

use crate::dns::wire::{self, rcode};

/// The fate of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Not the answer to this query (not a response, another ID, another question), or cut off
    /// inside its records so that no client could parse it: ignored, and the query keeps waiting,
    /// so a spoofed or broken packet cannot end it (RFC 5452 section 9.1).
    Ignore,
    /// SERVFAIL or REFUSED: this upstream failed the query, the next one gets it.
    MoveOn,
    /// The answer: relayed to the client.
    Accept,
}

/// Judges `reply` against `sent`, the query as it went upstream (with our ID in it), whose
/// question ends at `question_end`. Any bytes are safe to pass as `reply`.
pub fn judge(sent: &[u8], question_end: usize, reply: &[u8]) -> Fate {
    if !wire::is_response(reply)
        || wire::id(reply) != wire::id(sent)
        || !wire::same_question(sent, question_end, reply)
        || !wire::is_whole(reply, question_end)
    {
        return Fate::Ignore;
    }
    match wire::rcode_of(reply) {
        // "Not from me", not "no such name": the next upstream may answer.
        rcode::SERVFAIL | rcode::REFUSED => Fate::MoveOn,
        _ => Fate::Accept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `a.example.` A with ID 0x1234, and where its question ends.
    fn sent() -> (Vec<u8>, usize) {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        let end = q.len();
        (q, end)
    }

    fn reply_to(sent: &[u8], rcode: u8) -> Vec<u8> {
        let mut r = sent.to_vec();
        r[2] |= 0x80;
        r[3] = 0x80 | rcode;
        r
    }

    #[test]
    fn accepts_the_answer_and_moves_on_from_servfail_and_refused() {
        let (q, end) = sent();
        assert_eq!(judge(&q, end, &reply_to(&q, 0)), Fate::Accept);
        assert_eq!(judge(&q, end, &reply_to(&q, 3)), Fate::Accept, "NXDOMAIN is an answer");
        assert_eq!(judge(&q, end, &reply_to(&q, 2)), Fate::MoveOn);
        assert_eq!(judge(&q, end, &reply_to(&q, 5)), Fate::MoveOn);
        let mut upper = reply_to(&q, 0);
        upper[13] = b'A';
        assert_eq!(judge(&q, end, &upper), Fate::Accept, "0x20 case changes are the same question");
    }

    #[test]
    fn ignores_queries_other_ids_other_questions_and_runts() {
        let (q, end) = sent();
        assert_eq!(judge(&q, end, &q), Fate::Ignore, "a query is no reply");
        let mut other_id = reply_to(&q, 0);
        other_id[1] ^= 1;
        assert_eq!(judge(&q, end, &other_id), Fate::Ignore);
        let mut other_type = reply_to(&q, 0);
        other_type[end - 3] = 28;
        assert_eq!(judge(&q, end, &other_type), Fate::Ignore);
        let mut no_question = reply_to(&q, 0);
        no_question[5] = 0;
        assert_eq!(judge(&q, end, &no_question), Fate::Ignore);
        let reply = reply_to(&q, 0);
        for len in 0..end {
            assert_eq!(judge(&q, end, &reply[..len]), Fate::Ignore, "cut to {len} bytes");
        }
        let mut claims_an_answer = reply_to(&q, 0);
        claims_an_answer[7] = 1;
        assert_eq!(judge(&q, end, &claims_an_answer), Fate::Ignore, "ANCOUNT 1 and no record: cut off");
    }
}
