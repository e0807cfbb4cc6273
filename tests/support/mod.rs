//! Test support: the real registry-dns binary, real upstream servers from Debian's packages
//! (nsd, dnsmasq) and real `dig`, all on loopback. `tests/run.sh` installs the packages.

#![allow(dead_code)] // each test binary uses its own part of the support code

pub mod apiserver;
pub mod bad_upstream;
pub mod control_plane;
pub mod doctor_report;
pub mod forger;
pub mod images;
pub mod netns;
pub mod node;
pub mod registry_node;
pub mod registry_pod;
pub mod relay;
pub mod resolvers;
pub mod scrape;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("registry-dns-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free on both UDP and TCP right now, for servers that need a port up front.
pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range: registry-dns opens a fresh upstream socket every few
    // queries, on an ephemeral port, and one of the tests running beside this one could take the
    // port between this check and the bind of whoever asked for it.
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    assert!(low > 2048, "ephemeral ports start at {low}: no room below them for test servers");
    loop {
        let port = rand::random_range(1024..low);
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    ready()
}

/// The link-local address registry-dns serves on every node (deploy/base's DaemonSet), and its
/// listen address there.
pub const LINK_LOCAL: &str = "169.254.20.25";
pub const LINK_LOCAL_LISTEN: &str = "169.254.20.25:53";

/// A running registry-dns process with its log lines collected.
pub struct RegistryDns {
    child: Child,
    pub addr: SocketAddr,
    /// The ops endpoint (`/healthz`, `/readyz`), unless it is off.
    pub ops: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl RegistryDns {
    pub const BIN: &'static str = env!("CARGO_BIN_EXE_registry-dns");

    /// Starts the binary on an ephemeral loopback port (unless `args` has a `--listen`) and waits
    /// for its startup line.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(Self::BIN), args)
    }

    /// The flags that put registry-dns on its dummy interface `registry-dns0` at
    /// [`LINK_LOCAL`]:53, as the DaemonSet does (it needs CAP_NET_ADMIN for that), then `args`.
    pub fn link_local_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut all =
            vec!["--interface-name", "registry-dns0", "--interface-address", LINK_LOCAL, "--listen", LINK_LOCAL_LISTEN];
        all.extend_from_slice(args);
        all
    }

    /// Starts registry-dns with `command` (run in a node's network namespace) on its dummy
    /// interface at [`LINK_LOCAL`]:53, with `args` besides.
    pub fn start_link_local(command: Command, args: &[&str]) -> Self {
        Self::start_with(command, &Self::link_local_args(args))
    }

    /// Like [`RegistryDns::start`] with a prepared command (a network namespace, environment).
    pub fn start_with(mut command: Command, args: &[&str]) -> Self {
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--ops-listen") {
            command.args(["--ops-listen", "127.0.0.1:0"]);
        }
        command.args(args);
        Self::start_as_given(command)
    }

    /// Starts `command` with exactly its arguments and environment and waits for its startup line.
    pub fn start_as_given(mut command: Command) -> Self {
        // The default log filter, as users get it, unless TEST_RUST_LOG asks for more.
        match std::env::var("TEST_RUST_LOG") {
            Ok(filter) => command.env("RUST_LOG", filter),
            Err(_) => command.env_remove("RUST_LOG"),
        };
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("starting registry-dns");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[registry-dns] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let mut addr = None;
        let started = wait_until(Duration::from_secs(20), || {
            addr = logs.lock().unwrap().iter().find_map(|l| startup_field(l, "listen"));
            addr.is_some() || matches!(child.try_wait(), Ok(Some(_)))
        });
        let started = started && addr.is_some();
        if !started {
            let _ = child.kill();
            panic!("registry-dns did not start: {:?}", logs.lock().unwrap());
        }
        let ops = logs.lock().unwrap().iter().find_map(|l| startup_field(l, "ops"));
        Self { child, addr: addr.unwrap(), ops, logs }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.logs.lock().unwrap().iter().any(|l| l.contains(needle)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit on its own (a signal the test sent), up to `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RegistryDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first address in a field (`listen=`, `ops=`) of a startup line (text log format).
fn startup_field(line: &str, field: &str) -> Option<SocketAddr> {
    // The startup line, or the one a new instance logs while another still serves its address.
    if !line.contains("registry-dns serving") && !line.contains("joining once our sources have synced") {
        return None;
    }
    let key = format!(" {field}=");
    let rest = &line[line.find(&key)? + key.len()..];
    rest.split([',', ' ']).next()?.parse().ok()
}

/// `GET path` on an HTTP endpoint: status code and body (`None` when nothing answers).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path)
}

/// `POST path` (no body) on an HTTP endpoint: status code and body.
pub fn http_post(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "POST", path)
}

fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((status, body))
}

/// Runs the binary to completion (for startup failures): exit code and stderr.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    run_to_exit_with(Command::new(RegistryDns::BIN), args)
}

/// Like [`run_to_exit`] with a prepared command (a cgroup, a network namespace).
pub fn run_to_exit_with(mut command: Command, args: &[&str]) -> (Option<i32>, String) {
    let output = command.args(args).env_remove("RUST_LOG").output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// What `dig` printed, parsed.
#[derive(Debug, Clone)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Vec<String>>,
    pub authority: Vec<Vec<String>>,
    pub edns: Option<String>,
    pub raw: String,
}

impl Dig {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The RDATA of every answer record of `rtype`, as dig prints them.
    pub fn rdata(&self, rtype: &str) -> Vec<String> {
        self.answer.iter().filter(|r| r.get(3).map(String::as_str) == Some(rtype)).map(|r| r[4..].join(" ")).collect()
    }

    /// How long the answer took as dig measured it, from its query to the answer: without the
    /// start of the dig process, which a loaded machine can delay by hundreds of milliseconds.
    pub fn query_time(&self) -> Duration {
        let line = self.raw.lines().find(|l| l.starts_with(";; Query time:"));
        let ms = line.and_then(|l| l.split_whitespace().nth(3)).and_then(|ms| ms.parse().ok());
        Duration::from_millis(ms.unwrap_or_else(|| panic!("no answer:\n{}", self.raw)))
    }

    /// The answer section with TTLs left out, for comparing two servers' answers.
    pub fn answer_without_ttl(&self) -> Vec<String> {
        self.answer
            .iter()
            .map(|r| {
                r.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, f)| f.as_str()).collect::<Vec<_>>().join(" ")
            })
            .collect()
    }
}

/// Runs `dig @addr args...` (one try, short timeout unless the args say otherwise).
pub fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let output = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("running dig (tests/run.sh installs it)");
    parse_dig(&String::from_utf8_lossy(&output.stdout))
}

pub fn parse_dig(raw: &str) -> Dig {
    let mut dig = Dig {
        status: "NO ANSWER".into(),
        flags: Vec::new(),
        answer: Vec::new(),
        authority: Vec::new(),
        edns: None,
        raw: raw.to_string(),
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap().to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            dig.flags = rest.split(';').next().unwrap().split_whitespace().map(String::from).collect();
        } else if let Some(rest) = line.strip_prefix("; EDNS: ") {
            dig.edns = Some(rest.to_string());
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";;") || line.trim().is_empty() {
            section = "";
        } else if !line.starts_with(';') {
            let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
            match section {
                "answer" => dig.answer.push(fields),
                "authority" => dig.authority.push(fields),
                _ => {}
            }
        }
    }
    dig
}

/// An nsd authoritative server on a loopback port, serving the given zones. A zone whose
/// content is `None` is configured without a zone file, so nsd answers SERVFAIL for it.
pub struct Nsd {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Nsd {
    /// nsd serving `zones` (name, zone file text; `None` for a zone that fails to load) on a
    /// loopback port. Response rate limiting is off: tests that keep querying one name would
    /// otherwise get nsd's truncated "slip" answers and drops, which are not registry-dns's doing.
    pub fn start(zones: &[(&str, Option<&str>)]) -> Self {
        let dir = TempDir::new("nsd");
        let port = free_port();
        let d = dir.0.display();
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  \
             zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  xfrdfile: \"{d}/xfrd.state\"\n  \
             zonelistfile: \"{d}/zone.list\"\n  server-count: 1\n  verbosity: 1\n  \
             tcp-count: 64\n  rrl-ratelimit: 0\nremote-control:\n  control-enable: no\n"
        );
        for (name, content) in zones {
            let file = format!("{}.zone", name.trim_end_matches('.'));
            if let Some(content) = content {
                std::fs::write(dir.path(&file), content).unwrap();
            }
            conf.push_str(&format!("zone:\n  name: \"{name}\"\n  zonefile: \"{file}\"\n"));
        }
        std::fs::write(dir.path("nsd.conf"), conf).unwrap();
        let child = Command::new(nsd_binary())
            .args(["-d", "-c"])
            .arg(dir.path("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nsd (tests/run.sh installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let probe = zones[0].0;
        let up = wait_until(Duration::from_secs(10), || dig(addr, &[probe, "SOA"]).status != "NO ANSWER");
        assert!(up, "nsd did not start on {addr}");
        Self { child, addr, _dir: dir }
    }
}

impl Nsd {
    /// An outage: nsd is killed; [`Nsd::restart`] brings it back on the same port.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Command::new(nsd_binary())
            .args(["-d", "-c"])
            .arg(self._dir.path("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("restarting nsd");
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nsd_binary() -> &'static str {
    if Path::new("/usr/sbin/nsd").exists() { "/usr/sbin/nsd" } else { "nsd" }
}

/// The test zone `test.`: a plain name, a name with many records (an answer over 512 bytes, so
/// UDP without EDNS truncates), and nothing else (every other name is NXDOMAIN).
pub fn test_zone() -> String {
    let mut zone = String::from(
        "$ORIGIN test.\n$TTL 300\n@ IN SOA ns.test. hostmaster.test. 1 7200 1800 86400 300\n@ IN NS ns.test.\n\
         ns IN A 127.0.0.1\nwww IN A 192.0.2.1\nwww IN AAAA 2001:db8::1\n",
    );
    for i in 0..40 {
        zone.push_str(&format!("big IN A 198.51.100.{i}\n"));
    }
    zone
}

/// The zone `signed.test.` signed with ldns-signzone (made once per test binary): the answers
/// carry RRSIGs, which must pass through registry-dns unchanged.
pub fn signed_zone() -> &'static str {
    static ZONE: OnceLock<String> = OnceLock::new();
    ZONE.get_or_init(|| {
        let dir = TempDir::new("sign");
        std::fs::write(
            dir.path("signed.test.zone"),
            "$ORIGIN signed.test.\n$TTL 300\n@ IN SOA ns.signed.test. hostmaster.signed.test. 1 7200 1800 86400 300\n\
             @ IN NS ns.signed.test.\nns IN A 127.0.0.1\nsecure IN A 192.0.2.53\n",
        )
        .unwrap();
        let keygen = Command::new("ldns-keygen")
            .current_dir(&dir.0)
            .args(["-a", "ECDSAP256SHA256", "-k", "signed.test."])
            .output()
            .expect("running ldns-keygen (tests/run.sh installs ldnsutils)");
        assert!(keygen.status.success(), "ldns-keygen: {}", String::from_utf8_lossy(&keygen.stderr));
        let key = String::from_utf8_lossy(&keygen.stdout).trim().to_string();
        let sign =
            Command::new("ldns-signzone").current_dir(&dir.0).args(["-n", "signed.test.zone", &key]).output().unwrap();
        assert!(sign.status.success(), "ldns-signzone: {}", String::from_utf8_lossy(&sign.stderr));
        std::fs::read_to_string(dir.path("signed.test.zone.signed")).unwrap()
    })
}

/// An nsd serving `test.` and `signed.test.`: the usual healthy upstream.
pub fn healthy_upstream() -> Nsd {
    Nsd::start(&[("test.", Some(&test_zone())), ("signed.test.", Some(signed_zone()))])
}

/// Asks `name` A over `socket` (its read timeout bounds the wait): the rcode and the sorted
/// addresses, or `None` when no answer came. Answers to earlier queries are skipped by ID.
pub fn ask_a(socket: &UdpSocket, server: SocketAddr, name: &str) -> Option<(ResponseCode, Vec<String>)> {
    ask(socket, server, name, RecordType::A)
}

/// Like [`ask_a`] for A or AAAA.
pub fn ask(
    socket: &UdpSocket,
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> Option<(ResponseCode, Vec<String>)> {
    let id: u16 = rand::random();
    let mut query = Message::query();
    query.metadata.id = id;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).ok()?, rtype));
    socket.send_to(&query.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let Ok(reply) = Message::from_vec(&buf[..n]) else { continue };
        if reply.metadata.id != id {
            continue;
        }
        let mut addresses: Vec<String> = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        addresses.sort();
        return Some((reply.metadata.response_code, addresses));
    }
}
