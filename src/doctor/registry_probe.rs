//! The registry as containerd reaches it from this node: the endpoint's host resolved through the
//! system resolver (getaddrinfo, as containerd's Go resolver reads the same files), a TCP
//! connection to its port, then `GET /v2/` (the registry API's version check, the first request
//! of every pull) over the endpoint's scheme. Over HTTPS the chain is verified as containerd
//! verifies it: the system's roots plus the hosts.toml's `ca` files. Every failure is kept as
//! what it is, so that the verdict can name its fix.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::containerd::Endpoint;

/// Where Go's crypto/x509 (containerd's) finds the system's roots on Linux, first found wins.
const SYSTEM_ROOTS: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// What a pull's first steps met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub endpoint: Endpoint,
    /// The addresses getaddrinfo gave for the endpoint's host, or its error.
    pub resolved: Result<Vec<SocketAddr>, String>,
    /// The TCP connection, when the host resolved.
    pub connected: Option<Connected>,
    /// `GET /v2/`, when a connection was made.
    pub api: Option<Api>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    To(SocketAddr),
    /// Every address refused the connection: nothing listens on the port.
    Refused(Vec<SocketAddr>),
    /// No answer in time, or another error, for every address.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Api {
    /// An HTTP answer: its status and `Docker-Distribution-API-Version` header.
    Answer {
        status: u16,
        api_version: Option<String>,
    },
    /// The peer answered our TLS handshake in plain HTTP: an http registry behind an https endpoint.
    PlainHttpPeer,
    /// The peer expects TLS and answered our plain request so: an https registry behind an http endpoint.
    TlsPeer,
    /// The chain did not verify against the roots containerd would use.
    Untrusted(Untrusted),
    /// The CA file(s) the endpoint names cannot be read.
    UnreadableCa(String),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    UnknownIssuer,
    NotValidForName,
    Expired,
    Other(String),
}

/// Probes `endpoint` with `timeout` per step.
pub fn probe(endpoint: &Endpoint, timeout: Duration) -> Probe {
    let resolved = (endpoint.host.as_str(), port(endpoint))
        .to_socket_addrs()
        .map(|addrs| addrs.collect::<Vec<_>>())
        .map_err(|e| e.to_string().trim_start_matches("failed to lookup address information: ").to_string());
    let mut probe = Probe { endpoint: endpoint.clone(), resolved, connected: None, api: None };
    let Ok(addresses) = &probe.resolved else { return probe };
    let (connected, stream) = connect(addresses, timeout);
    probe.connected = Some(connected);
    if let Some(stream) = stream {
        probe.api = Some(match endpoint.scheme.as_str() {
            "https" => https(stream, endpoint, timeout),
            _ => plain(stream, endpoint),
        });
    }
    probe
}

fn port(endpoint: &Endpoint) -> u16 {
    endpoint.authority.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(443)
}

fn connect(addresses: &[SocketAddr], timeout: Duration) -> (Connected, Option<TcpStream>) {
    let mut errors = Vec::new();
    let mut refused = Vec::new();
    for &addr in addresses {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(timeout));
                let _ = stream.set_write_timeout(Some(timeout));
                return (Connected::To(addr), Some(stream));
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused.push(addr),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    match errors.is_empty() {
        true => (Connected::Refused(refused), None),
        false => (Connected::Failed(errors.join("; ")), None),
    }
}

/// `GET /v2/` over `stream` as is.
fn plain(mut stream: TcpStream, endpoint: &Endpoint) -> Api {
    let answer = get_v2(&mut stream, endpoint);
    // Go's TLS server answers a plain request with 400 "Client sent an HTTP request to an HTTPS
    // server", others with a TLS alert: confirm with a handshake that the peer speaks TLS.
    let maybe_tls = matches!(&answer, Ok(Api::Answer { status: 400, .. })) || answer.is_err();
    if maybe_tls {
        let again = stream.peer_addr().and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)));
        if again.is_ok_and(|tls| speaks_tls(tls, &endpoint.host)) {
            return Api::TlsPeer;
        }
    }
    answer.unwrap_or_else(Api::Failed)
}

/// Whether the peer answers a TLS ClientHello with TLS (whatever its certificate).
fn speaks_tls(stream: TcpStream, host: &str) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    match handshake(stream, host, RootCertStore::empty()) {
        Ok(_) => true,
        Err(HandshakeError::Tls(rustls::Error::InvalidCertificate(_))) => true,
        Err(_) => false,
    }
}

/// The TLS handshake with the roots containerd would use, then `GET /v2/`.
fn https(stream: TcpStream, endpoint: &Endpoint, timeout: Duration) -> Api {
    let roots = match roots(&endpoint.ca) {
        Ok(roots) => roots,
        Err(e) => return Api::UnreadableCa(e),
    };
    let peer = stream.peer_addr().ok();
    let mut tls = match handshake(stream, &endpoint.host, roots) {
        Ok(tls) => tls,
        Err(HandshakeError::Tls(rustls::Error::InvalidCertificate(e))) => {
            return Api::Untrusted(match e {
                CertificateError::UnknownIssuer => Untrusted::UnknownIssuer,
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    Untrusted::NotValidForName
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => Untrusted::Expired,
                other => Untrusted::Other(format!("{other:?}")),
            });
        }
        Err(HandshakeError::Tls(rustls::Error::InvalidMessage(_)) | HandshakeError::Io(_)) => {
            // A plain-HTTP server answers a ClientHello with an HTTP 400 (or closes): ask it in
            // plain HTTP to be sure.
            let again = peer.and_then(|addr| TcpStream::connect_timeout(&addr, timeout).ok());
            if let Some(mut stream) = again {
                let _ = stream.set_read_timeout(Some(timeout));
                if let Ok(Api::Answer { .. }) = get_v2(&mut stream, endpoint) {
                    return Api::PlainHttpPeer;
                }
            }
            return Api::Failed("the TLS handshake failed".into());
        }
        Err(e) => return Api::Failed(format!("TLS: {e}")),
    };
    get_v2(&mut tls, endpoint).unwrap_or_else(Api::Failed)
}

enum HandshakeError {
    Tls(rustls::Error),
    Io(std::io::Error),
    Name(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Name(e) => write!(f, "{e}"),
        }
    }
}

fn handshake(
    stream: TcpStream,
    host: &str,
    roots: RootCertStore,
) -> Result<StreamOwned<ClientConnection, TcpStream>, HandshakeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(HandshakeError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| HandshakeError::Name(e.to_string()))?;
    let connection = ClientConnection::new(Arc::new(config), name).map_err(HandshakeError::Tls)?;
    let mut tls = StreamOwned::new(connection, stream);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return Err(match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(tls_error) => HandshakeError::Tls(tls_error.clone()),
                None => HandshakeError::Io(e),
            });
        }
    }
    Ok(tls)
}

/// The system's roots (the first bundle found) plus `extra`, as containerd builds its pool.
fn roots(extra: &[PathBuf]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(bundle) = SYSTEM_ROOTS.iter().map(Path::new).find(|p| p.exists()) {
        add_pem(&mut roots, bundle, false)?;
    }
    for file in extra {
        add_pem(&mut roots, file, true)?;
    }
    Ok(roots)
}

fn add_pem(roots: &mut RootCertStore, file: &Path, required: bool) -> Result<(), String> {
    let pem = match std::fs::read(file) {
        Ok(pem) => pem,
        Err(e) if required => return Err(format!("cannot read {}: {e}", file.display())),
        Err(_) => return Ok(()),
    };
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if required && certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", file.display()));
    }
    roots.add_parsable_certificates(certificates);
    Ok(())
}

/// `GET /v2/` on `stream`: the status and the registry's API version header.
fn get_v2(stream: &mut impl ReadWrite, endpoint: &Endpoint) -> Result<Api, String> {
    let request = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nUser-Agent: registry-dns-doctor\r\nConnection: close\r\n\r\n",
        endpoint.authority
    );
    stream.write_all(request.as_bytes()).map_err(|e| format!("sending GET /v2/: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if head.is_empty() => return Err(format!("reading the answer to GET /v2/: {e}")),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.strip_prefix("HTTP/1.") {
        Some(rest) => rest.get(2..5).and_then(|s| s.parse().ok()).ok_or(format!("a bad status line: {status_line}"))?,
        None => return Err(format!("not HTTP: {:?}", status_line.chars().take(20).collect::<String>())),
    };
    let api_version = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("docker-distribution-api-version").then(|| value.trim().to_string())
    });
    Ok(Api::Answer { status, api_version })
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
