//! Batched UDP I/O: `recvmmsg` and `sendmmsg`, many datagrams per system call.
//!
//! System calls dominate a UDP DNS server's cost per query (the benchmark's floor is a bare
//! recvmmsg/sendmmsg loop), so the listeners read and answer in batches. This is the crate's only
//! `unsafe` code: the buffers and addresses handed to the kernel live in these structs and outlive
//! each call, and registered sockets are owned by their `AsyncFd`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// Registers a non-blocking UDP socket with the current runtime for readability (sends never wait:
/// a full socket buffer drops the datagram, as the network may).
pub fn register(socket: std::net::UdpSocket) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    socket.set_nonblocking(true)?;
    register_owned(socket)
}

/// Registers `owner`'s descriptor with the current runtime for readability. `owner` must own the
/// descriptor (close it on drop, never replace it), as an epoll instance or a socket does.
pub fn register_owned<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: the AsyncFd owns `owner`, which owns its descriptor, so the descriptor stays open
    // and the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(owner, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// Waits until `socket` is readable, then calls `read_batch` (one `recvmmsg` and the handling of
/// what it read; returns how many datagrams) until the socket is drained. A batch shorter than
/// [`BATCH`] proves the queue was empty, so readiness is cleared without the extra call that would
/// only return `EAGAIN`; a datagram arriving after that read raises a new edge and a new wakeup.
pub async fn drain<T: AsRawFd>(
    socket: &AsyncFd<T>,
    mut read_batch: impl FnMut(RawFd) -> io::Result<usize>,
) -> io::Result<()> {
    let mut guard = socket.readable().await?;
    loop {
        match guard.try_io(|s| read_batch(s.as_raw_fd())) {
            Ok(Ok(n)) if n < BATCH => {
                guard.clear_ready();
                return Ok(());
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            // WouldBlock: `try_io` has cleared the readiness.
            Err(_) => return Ok(()),
        }
    }
}

/// Datagrams read by one `recvmmsg`.
pub struct RecvBatch {
    /// `BATCH` buffers of `buffer_size` bytes, one allocation. Large sizes cost little memory: the
    /// kernel only makes the pages a datagram is written to resident.
    buffers: Vec<u8>,
    buffer_size: usize,
    addrs: Vec<libc::sockaddr_storage>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl RecvBatch {
    /// A batch whose datagrams may be up to `buffer_size` bytes; longer ones are dropped.
    pub fn new(buffer_size: usize) -> Self {
        Self {
            buffers: vec![0; BATCH * buffer_size],
            buffer_size,
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: [0; BATCH],
            truncated: [false; BATCH],
        }
    }

    /// Reads up to [`BATCH`] datagrams without blocking; `WouldBlock` when there are none.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i * self.buffer_size..].as_mut_ptr().cast(),
            iov_len: self.buffer_size,
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

    /// Datagram `i` of the last read, without its sender; `None` for one that was cut short.
    pub fn message(&self, i: usize) -> Option<&[u8]> {
        if self.truncated[i] {
            return None;
        }
        Some(&self.buffers[i * self.buffer_size..i * self.buffer_size + self.lens[i]])
    }

    /// Datagram `i` of the last read and its sender; `None` for one that was cut short or came
    /// from an address family we do not serve.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if self.truncated[i] {
            return None;
        }
        let from = to_socket_addr(&self.addrs[i])?;
        Some((&self.buffers[i * self.buffer_size..i * self.buffer_size + self.lens[i]], from))
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

/// Datagrams collected during one batch and sent by one `sendmmsg`: answers to clients (each
/// with its address) or queries to an upstream (on a connected socket, without one).
pub struct SendBatch {
    buffers: Vec<Vec<u8>>,
    addrs: Vec<Option<SockAddr>>,
    count: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self { buffers: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(), addrs: vec![None; BATCH], count: 0 }
    }
}

impl SendBatch {
    pub fn is_full(&self) -> bool {
        self.count == BATCH
    }

    /// The buffer the next datagram is written into; it is sent only once [`SendBatch::commit`]ed.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffers[self.count]
    }

    /// Queues the datagram written into [`SendBatch::buffer`], for `to` (`None` on a connected
    /// socket).
    pub fn commit(&mut self, to: Option<SocketAddr>) {
        self.addrs[self.count] = to.map(SockAddr::from);
        self.count += 1;
    }

    /// Queues a copy of `datagram`.
    pub fn push(&mut self, datagram: &[u8], to: Option<SocketAddr>) {
        let buffer = self.buffer();
        buffer.clear();
        buffer.extend_from_slice(datagram);
        self.commit(to);
    }

    /// Sends every queued datagram; returns the failed ones as bits (bit `i` for the `i`th queued).
    /// A datagram the kernel refuses is skipped and the rest still go, so one unroutable address
    /// cannot cost the others their answers; the batch is empty afterwards either way (UDP gives
    /// no delivery promise: the caller decides whether a failed one is retried elsewhere).
    pub fn send(&mut self, fd: RawFd) -> u32 {
        let count = self.count;
        self.count = 0;
        if count == 0 {
            return 0;
        }
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i].as_mut_ptr().cast(),
            iov_len: self.buffers[i].len(),
        });
        // SAFETY: mmsghdr is plain data; the fields that matter are set below.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..count {
            if let Some(addr) = &self.addrs[i] {
                headers[i].msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                headers[i].msg_hdr.msg_namelen = addr.len();
            }
            headers[i].msg_hdr.msg_iov = &mut iovecs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        let mut failed = 0u32;
        let mut sent = 0;
        while sent < count {
            // SAFETY: as in `RecvBatch::recv`; entries `sent..count` are initialized.
            let n = unsafe {
                libc::sendmmsg(fd, headers[sent..].as_mut_ptr(), (count - sent) as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if n >= 0 {
                sent += n as usize;
            } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                failed |= 1 << sent;
                sent += 1;
            }
        }
        failed
    }
}
