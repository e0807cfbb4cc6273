//! Batched UDP I/O: `recvmmsg` and `sendmmsg`, many datagrams per system call.
//!
//! System calls dominate a UDP DNS server's cost per query (the benchmark's floor is a bare
//! recvmmsg/sendmmsg loop), so the listeners read and answer in batches. This is the crate's only
//! `unsafe` code: the buffers and addresses handed to the kernel live in this struct and outlive
//! each call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Receive buffer per datagram: larger than any query; a datagram that does not fit is dropped.
const RECV_BUFFER: usize = 4096;

/// Datagrams read by one `recvmmsg`.
pub struct RecvBatch {
    buffers: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            buffers: vec![0; BATCH * RECV_BUFFER],
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
        }
    }

    /// Reads up to [`BATCH`] datagrams without blocking; `WouldBlock` when there are none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i * RECV_BUFFER..].as_mut_ptr().cast(),
            iov_len: RECV_BUFFER,
        });
        // SAFETY: mmsghdr is plain data; the fields that matter are set below.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, header) in headers.iter_mut().enumerate() {
            header.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer in `headers` points into `self` or `iovecs`, which outlive the call,
        // and each length matches its buffer.
        let n = unsafe {
            libc::recvmmsg(fd, headers.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, header) in headers.iter().enumerate().take(n) {
            self.lens[i] = header.msg_len as usize;
            self.truncated[i] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Datagram `i` of the last read and its sender; `None` for one that was cut short or came
    /// from an address family we do not serve.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if self.truncated[i] {
            return None;
        }
        let from = to_socket_addr(&self.addrs[i])?;
        Some((&self.buffers[i * RECV_BUFFER..i * RECV_BUFFER + self.lens[i]], from))
    }
}

fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in, which fits in sockaddr_storage.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6, which fits in sockaddr_storage.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Answers collected during one batch and sent by one `sendmmsg`.
pub struct SendBatch {
    buffers: Vec<Vec<u8>>,
    addrs: Vec<SockAddr>,
    count: usize,
}

impl SendBatch {
    pub fn new() -> Self {
        Self {
            buffers: (0..BATCH).map(|_| Vec::with_capacity(1500)).collect(),
            addrs: (0..BATCH).map(|_| SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)))).collect(),
            count: 0,
        }
    }

    /// The buffer the next answer is written into; it is sent only once [`SendBatch::commit`]ed.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffers[self.count]
    }

    /// Queues the answer written into [`SendBatch::buffer`] for `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        self.addrs[self.count] = SockAddr::from(to);
        self.count += 1;
    }

    /// Sends every queued answer. UDP gives no delivery promise, so an answer the socket cannot
    /// take right now (full buffer) is dropped and the client retries, as with any lost datagram.
    pub fn flush(&mut self, fd: RawFd) {
        let count = self.count;
        self.count = 0;
        if count == 0 {
            return;
        }
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i].as_mut_ptr().cast(),
            iov_len: self.buffers[i].len(),
        });
        // SAFETY: mmsghdr is plain data; the fields that matter are set below.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..count {
            headers[i].msg_hdr.msg_name = self.addrs[i].as_ptr() as *mut libc::c_void;
            headers[i].msg_hdr.msg_namelen = self.addrs[i].len();
            headers[i].msg_hdr.msg_iov = &mut iovecs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: as in `RecvBatch::recv`; entries `sent..count` are initialized.
            let n = unsafe {
                libc::sendmmsg(fd, headers[sent..].as_mut_ptr(), (count - sent) as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return,
                    // This one answer cannot be sent (say, an unroutable address): skip it.
                    _ => sent += 1,
                }
            } else {
                sent += n as usize;
            }
        }
    }
}
