//! Listening sockets. Every one is bound with SO_REUSEPORT: each UDP worker gets its own socket
//! on the same address (the kernel spreads clients across them), and an old and a new instance
//! can overlap on one address during a restart.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffers large enough to absorb bursts between two reads (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`).
const BUFFER_BYTES: usize = 4 << 20;
const TCP_BACKLOG: i32 = 1024;

fn new_socket(addr: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // So that `[::]:53` and `0.0.0.0:53` can both be listened on.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

pub fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    let _ = socket.set_recv_buffer_size(BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub fn tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    Ok(socket.into())
}
