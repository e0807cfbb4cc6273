//! An off-path forger: UDP datagrams whose source is someone else's address and port, sent through
//! a raw socket as an attacker on the node's network can (a pod on most CNIs). Needs root
//! (CAP_NET_RAW); CI runs as root.

use std::net::SocketAddrV4;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub struct Forger(Socket);

impl Forger {
    pub fn new() -> Self {
        // IPPROTO_RAW: we write the IP header ourselves (IP_HDRINCL), source address included.
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))
            .expect("a raw socket: this test needs root (tests/run.sh runs as root in CI)");
        Self(socket)
    }

    /// Sends `payload` to `to` as a UDP datagram from `from`.
    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut packet = Vec::with_capacity(total);
        // IPv4 header: version 4, IHL 5; the kernel fills in the checksum (and the ID when 0).
        packet.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        packet.extend_from_slice(&from.ip().octets());
        packet.extend_from_slice(&to.ip().octets());
        // UDP header; checksum 0 means none over IPv4.
        packet.extend_from_slice(&from.port().to_be_bytes());
        packet.extend_from_slice(&to.port().to_be_bytes());
        packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        self.0.send_to(&packet, &SockAddr::from(to)).expect("sending a forged datagram");
    }
}
