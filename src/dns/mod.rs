//! The DNS wire format, as far as the hot path reads and patches it, and the value types every
//! stage of a query shares.

pub mod wire;

/// Which transport a query came over: it bounds the size of an answer, and each transport has a
/// cache of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}
