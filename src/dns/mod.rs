//! The DNS wire format, as far as the hot path reads and patches it, and the value types every
//! stage of a query shares.

pub mod wire;

/// Which transport a query came over: it bounds the size of an answer, decides how the query goes
/// upstream, and labels the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Tcp];

    /// The `proto` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}
