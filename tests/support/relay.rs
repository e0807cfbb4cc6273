//! kube-proxy's part for the `kubernetes` Service where there is no kube-proxy: a thread that
//! forwards every TCP connection accepted in a node's network namespace to the API server on the
//! host's loopback.

use std::net::{SocketAddr, TcpListener, TcpStream};

/// Forwards every connection accepted on `listener` (made in another network namespace) to `to`
/// (in this thread's namespace, the host's), until the listener fails (its namespace is gone).
pub fn relay(listener: TcpListener, to: SocketAddr) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(to) else { continue };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
            pipe(server, client);
        }
    });
}
