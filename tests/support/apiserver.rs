//! A fake Kubernetes API server for tests: plain HTTP/1.1 on loopback, speaking the real list/watch
//! protocol closely enough that kube-rs's client, `watcher` and `reflector` cannot tell it apart
//! from a real one (`tests/apiserver_fake.rs` proves that with kube's own client).
//!
//! What it reproduces:
//! - Paths `/api/v1[/namespaces/{ns}]/{plural}[/{name}]` and
//!   `/apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}]` for the built-in kinds below and
//!   for any kind that was `apply`d (plural: lowercased kind + "s"); everything else is a 404 Status.
//! - LIST: `{kind: XList, apiVersion, metadata: {resourceVersion, continue?, remainingItemCount?},
//!   items}` with items in key order, without apiVersion/kind (as the real server sends them);
//!   `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, ANDed by
//!   commas), `fieldSelector` (`metadata.name`, `metadata.namespace` with `=`, `==`, `!=`; other
//!   fields are a 400 "field label not supported"), `limit` + `continue` pagination (pages show
//!   the current state, not a snapshot; a token older than the last `compact` is a 410 Expired).
//! - GET of a single object (404 NotFound Status when missing), `/version`.
//! - WATCH (`watch=true|1|t|True|TRUE`): 200, `Transfer-Encoding: chunked`, one
//!   `{"type":..,"object":..}` line per chunk. From `resourceVersion=N`: the history after N, then
//!   live events. Unset or "0": synthetic ADDED for the current objects first (as the real server).
//!   `sendInitialEvents=true` (+ `resourceVersionMatch=NotOlderThan` + `allowWatchBookmarks=true`,
//!   else 422 Invalid, as the real validation): ADDED for the current objects, then a BOOKMARK
//!   annotated `k8s.io/initial-events-end: "true"`. An object that starts or stops matching the
//!   selectors arrives as ADDED / DELETED (the cacher's rule). BOOKMARKs every
//!   `set_bookmark_interval` (default 1 s) when `allowWatchBookmarks=true`, with the global
//!   resourceVersion, never going backwards on one stream. N older than the last `compact` → a
//!   `{"type":"ERROR","object":{Status 410 Expired "too old resource version: N (C)"}}` event and a
//!   clean end. The stream ends cleanly (final chunk) after `timeoutSeconds` or the
//!   `set_watch_timeout` cap, whichever is shorter.
//! - resourceVersion: one global counter, bumped by every write (and by `compact`, standing for the
//!   writes to other resources a real cluster always has). A no-op `apply` (same object) writes
//!   nothing and emits nothing, as the real server.
//!
//! Faults on demand, for `tests/kubernetes_faults.rs`: failing requests with any status, for a
//! count and with `Retry-After` (`fail_requests_with`), raw lines injected into open watch streams
//! (`inject_watch_line`), watches that stream filler forever (`stall_watches`), plus the
//! arrival time of every request (`request_times`).
//!
//! Left out: authentication (any token is accepted), TLS, protobuf, gzip, writes over HTTP
//! (POST/PUT/PATCH/DELETE answer 405; tests change state through `apply`/`delete`), cluster-scoped
//! kinds, list snapshots at an old resourceVersion (`resourceVersion`/`resourceVersionMatch` on
//! LIST are accepted and ignored: always the current state), the "too large resource version"
//! wait (a watch from a future RV just waits for it), field selectors beyond metadata.name and
//! metadata.namespace, managedFields, generation, finalizers and graceful deletion.

#![allow(dead_code)] // each test binary uses its own part of the support code

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Kinds the server knows before anything is applied (so an empty collection lists as empty
/// instead of 404), as (apiVersion, kind, plural).
const BUILTIN_KINDS: &[(&str, &str, &str)] = &[
    ("v1", "Service", "services"),
    ("v1", "Endpoints", "endpoints"),
    ("v1", "Pod", "pods"),
    ("v1", "ConfigMap", "configmaps"),
    ("v1", "Secret", "secrets"),
    ("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
];

/// The watch timeout the real server picks when the client sends no `timeoutSeconds`
/// (min-request-timeout; the real one randomises up to twice that).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    /// Bumped whenever the watch timeout cap or bookmark interval changes, so running watches
    /// pick the new values up.
    config: tokio::sync::watch::Sender<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct ObjKey {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

struct HistoryEvent {
    rv: u64,
    ty: EventType,
    key: ObjKey,
    object: Value,
    /// The object before a MODIFIED, for selector transitions.
    prev: Option<Value>,
}

#[derive(Clone)]
struct ResType {
    api_version: String,
    kind: String,
    plural: String,
}

struct WatchSub {
    conn: u64,
    ty: ResType,
    filter: Filter,
    tx: mpsc::UnboundedSender<(u64, String)>,
    /// Set by `compact` on the watches open at that moment: their bookmarks never carry a
    /// resourceVersion at or past the compaction, so a client that saw no event since resumes
    /// from a compacted version and gets its 410.
    bookmark_ceiling: Option<u64>,
}

struct Conn {
    task: JoinHandle<()>,
    watching: bool,
}

struct State {
    rv: u64,
    /// Events with rv > compacted_rv are in `history`; a watch from an older rv gets 410.
    compacted_rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: Vec<HistoryEvent>,
    types: Vec<ResType>,
    watches: HashMap<u64, WatchSub>,
    conns: HashMap<u64, Conn>,
    listener: Option<JoinHandle<()>>,
    listening: bool,
    next_id: u64,
    watch_cap: Option<Duration>,
    bookmark_interval: Duration,
    /// Every request with the moment it arrived.
    requests: Vec<(Instant, String)>,
    failure: Option<Failure>,
    /// While set, new watches stream this filler forever instead of events (`stall_watches`).
    stall: Option<(String, Duration)>,
}

/// An injected failure (`fail_requests_with`).
#[derive(Clone, Debug)]
struct Failure {
    code: u16,
    retry_after: Option<u64>,
    /// How many more requests fail; `None`: all, until cleared.
    remaining: Option<usize>,
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn ensure_type(&mut self, api_version: &str, kind: &str) {
        if !self.types.iter().any(|t| t.api_version == api_version && t.kind == kind) {
            let lower = kind.to_ascii_lowercase();
            let plural = if lower.ends_with('s') || lower.ends_with("ch") || lower.ends_with('x') {
                format!("{lower}es")
            } else if let Some(stem) = lower.strip_suffix('y') {
                format!("{stem}ies")
            } else {
                format!("{lower}s")
            };
            self.types.push(ResType { api_version: api_version.into(), kind: kind.into(), plural });
        }
    }

    /// Records a write: history, then every open watch that should see it.
    fn record(&mut self, event: HistoryEvent) {
        let mut dead = Vec::new();
        for (id, sub) in &self.watches {
            if let Some(line) = watch_line_for(&sub.ty, &sub.filter, &event)
                && sub.tx.send((event.rv, line)).is_err()
            {
                dead.push(*id);
            }
        }
        for id in dead {
            self.watches.remove(&id);
        }
        self.history.push(event);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeApiServer {
    /// Starts listening on 127.0.0.1 on a free port, on a runtime of its own.
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .expect("fake apiserver runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake apiserver");
        let addr = listener.local_addr().unwrap();
        let state = State {
            // Real clusters have large resourceVersions; start somewhere that is clearly not 0/1.
            rv: 1000,
            compacted_rv: 1000,
            objects: BTreeMap::new(),
            history: Vec::new(),
            types: BUILTIN_KINDS
                .iter()
                .map(|(a, k, p)| ResType { api_version: (*a).into(), kind: (*k).into(), plural: (*p).into() })
                .collect(),
            watches: HashMap::new(),
            conns: HashMap::new(),
            listener: None,
            listening: false,
            next_id: 0,
            watch_cap: None,
            bookmark_interval: Duration::from_secs(1),
            requests: Vec::new(),
            failure: None,
            stall: None,
        };
        let shared = Arc::new(Shared { addr, state: Mutex::new(state), config: tokio::sync::watch::Sender::new(0) });
        let server = Self { shared, runtime: Some(runtime) };
        server.listen(listener);
        server
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime")
    }

    fn listen(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let _guard = self.runtime().enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut st = lock(&self.shared);
        st.listening = true;
        st.listener = Some(self.runtime().spawn(accept_loop(self.shared.clone(), listener)));
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig whose current context points at this server, namespace "default", with a
    /// dummy bearer token (the server accepts anything).
    pub fn write_kubeconfig(&self, path: &Path) {
        self.write_kubeconfig_with_namespace(path, "default");
    }

    pub fn write_kubeconfig_with_namespace(&self, path: &Path, namespace: &str) {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n\
             \x20 cluster:\n\
             \x20   server: {}\n\
             contexts:\n\
             - name: fake\n\
             \x20 context:\n\
             \x20   cluster: fake\n\
             \x20   namespace: {namespace}\n\
             \x20   user: fake\n\
             current-context: fake\n\
             preferences: {{}}\n\
             users:\n\
             - name: fake\n\
             \x20 user:\n\
             \x20   token: fake-token\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Creates or replaces the object by (apiVersion, kind, metadata.namespace, metadata.name);
    /// metadata.namespace defaults to "default". Assigns the next global resourceVersion, sets
    /// uid and creationTimestamp on create (kept on replace), emits ADDED or MODIFIED. A replace
    /// with an identical object (ignoring resourceVersion, uid, creationTimestamp) is a no-op,
    /// as on a real server. Returns the object as stored.
    pub fn apply(&self, object: Value) -> Value {
        let mut obj = object;
        let api_version = obj["apiVersion"].as_str().expect("object needs apiVersion").to_string();
        let kind = obj["kind"].as_str().expect("object needs kind").to_string();
        let name = obj["metadata"]["name"].as_str().expect("object needs metadata.name").to_string();
        if obj["metadata"]["namespace"].as_str().is_none() {
            obj["metadata"]["namespace"] = json!("default");
        }
        let namespace = obj["metadata"]["namespace"].as_str().unwrap().to_string();
        let key = ObjKey { api_version: api_version.clone(), kind: kind.clone(), namespace, name };
        let mut st = lock(&self.shared);
        st.ensure_type(&api_version, &kind);
        let prev = st.objects.get(&key).cloned();
        let meta = obj["metadata"].as_object_mut().expect("metadata must be an object");
        meta.remove("resourceVersion");
        match &prev {
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    meta.insert(field.into(), old["metadata"][field].clone());
                }
                let mut old_without_rv = old.clone();
                old_without_rv["metadata"].as_object_mut().unwrap().remove("resourceVersion");
                if old_without_rv == obj {
                    return old.clone();
                }
            }
            None => {
                let n = st.next_id();
                meta.insert("uid".into(), json!(fake_uid(&format!("{key:?}"), n)));
                meta.insert("creationTimestamp".into(), json!(rfc3339(SystemTime::now())));
            }
        }
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.objects.insert(key.clone(), obj.clone());
        let ty = if prev.is_some() { EventType::Modified } else { EventType::Added };
        st.record(HistoryEvent { rv, ty, key, object: obj.clone(), prev });
        obj
    }

    /// Deletes the object (emitting DELETED with the object stamped with the deletion's
    /// resourceVersion). Returns whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let key = ObjKey {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut st = lock(&self.shared);
        let Some(mut obj) = st.objects.remove(&key) else { return false };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.record(HistoryEvent { rv, ty: EventType::Deleted, key, object: obj, prev: None });
        true
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = ObjKey {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        lock(&self.shared).objects.get(&key).cloned()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared).rv
    }

    /// An outage: closes the listener (connections are refused) and drops every open connection
    /// abruptly (watch streams end without their final chunk). Returns once all are closed.
    pub fn stop(&self) {
        let handles = {
            let mut st = lock(&self.shared);
            st.listening = false;
            st.watches.clear();
            let mut handles: Vec<_> = st.conns.drain().map(|(_, c)| c.task).collect();
            handles.extend(st.listener.take());
            handles
        };
        abort_and_wait(handles);
    }

    /// Listens again on the same port, with the state (objects, history) kept. No-op when
    /// already listening.
    pub fn restart(&self) {
        if lock(&self.shared).listening {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(self.shared.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("fake apiserver cannot listen again on {}: {e}", self.shared.addr),
            }
        };
        self.listen(listener);
    }

    /// Forgets the event history, as an etcd compaction / watch-cache eviction: a watch from a
    /// resourceVersion older than now gets an ERROR event with a 410 Expired Status. The global
    /// resourceVersion moves on by one (other resources' writes), so a fresh LIST gives a version
    /// that can be watched. Watches open now keep running, but their bookmarks stop advancing
    /// past the compaction, so a client that sees no new event and reconnects (see
    /// `drop_watches`) gets the 410, as a real client would after missing the window.
    pub fn compact(&self) {
        let mut st = lock(&self.shared);
        let before = st.rv;
        st.rv += 1;
        st.compacted_rv = st.rv;
        st.history.clear();
        for sub in st.watches.values_mut() {
            sub.bookmark_ceiling = Some(before);
        }
    }

    /// Abruptly closes every connection that is serving a watch (no final chunk), while still
    /// listening. Returns how many were closed.
    pub fn drop_watches(&self) -> usize {
        let handles = {
            let mut st = lock(&self.shared);
            let ids: Vec<u64> = st.conns.iter().filter(|(_, c)| c.watching).map(|(id, _)| *id).collect();
            st.watches.retain(|_, w| !ids.contains(&w.conn));
            ids.iter().filter_map(|id| st.conns.remove(id)).map(|c| c.task).collect::<Vec<_>>()
        };
        let n = handles.len();
        abort_and_wait(handles);
        n
    }

    /// Caps every watch's duration (open ones included, counted from their start): at the cap the
    /// stream ends cleanly with the final chunk, as the real server does at `timeoutSeconds`.
    pub fn set_watch_timeout(&self, d: Duration) {
        lock(&self.shared).watch_cap = Some(d);
        self.shared.config.send_modify(|v| *v += 1);
    }

    pub fn clear_watch_timeout(&self) {
        lock(&self.shared).watch_cap = None;
        self.shared.config.send_modify(|v| *v += 1);
    }

    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (default 1 s; the real
    /// server sends them about once a minute and shortly before the timeout).
    pub fn set_bookmark_interval(&self, d: Duration) {
        lock(&self.shared).bookmark_interval = d;
        self.shared.config.send_modify(|v| *v += 1);
    }

    /// While set, every API request (LIST, WATCH, GET; not `/version`) is answered with this HTTP
    /// code and a matching Status (403 Forbidden as RBAC would, 500 InternalError, 503
    /// ServiceUnavailable, 429 TooManyRequests, ...), as a server that is up but refusing.
    /// NB kube's client itself retries 429/503/504 (up to 15 times, from 5 ms) before the
    /// watcher sees an error. `None` ends it.
    pub fn fail_requests(&self, code: Option<u16>) {
        lock(&self.shared).failure = code.map(|code| Failure { code, retry_after: None, remaining: None });
    }

    /// Like `fail_requests`, for the next `count` API requests only (`None`: all, until
    /// `fail_requests(None)`), with a `Retry-After: SECONDS` header when `retry_after` is given.
    /// A 429 comes as the real server's max-in-flight and priority-and-fairness filters send it:
    /// `Retry-After` and a plain-text body, no Status.
    pub fn fail_requests_with(&self, code: u16, retry_after: Option<u64>, count: Option<usize>) {
        lock(&self.shared).failure = Some(Failure { code, retry_after, remaining: count });
    }

    /// Sends `text` as it is (a malformed line, an event with a broken object: the caller adds
    /// the newline) as one chunk on every open watch stream. Returns how many streams got it.
    pub fn inject_watch_line(&self, text: &str) -> usize {
        assert!(!text.is_empty(), "an empty chunk would end the stream");
        let st = lock(&self.shared);
        st.watches.values().filter(|sub| sub.tx.send((0, text.to_string())).is_ok()).count()
    }

    /// While `Some((filler, every))`, a new watch is answered 200 and then gets `filler` as a chunk
    /// every `every`, forever: no event, no bookmark, no end at its timeout (a stuck proxy, or a
    /// server that only keeps the connection alive). Watches already open are not affected;
    /// `None` ends it for new watches, and stalled ones then stop sending filler but stay open.
    pub fn stall_watches(&self, stall: Option<(String, Duration)>) {
        lock(&self.shared).stall = stall;
        self.shared.config.send_modify(|v| *v += 1);
    }

    /// The requests that arrived at or after `since`, as `requests` shows them.
    pub fn requests_since(&self, since: Instant) -> Vec<String> {
        lock(&self.shared).requests.iter().filter(|(t, _)| *t >= since).map(|(_, r)| r.clone()).collect()
    }

    /// When each request that matches `pred` arrived.
    pub fn request_times(&self, pred: impl Fn(&str) -> bool) -> Vec<Instant> {
        lock(&self.shared).requests.iter().filter(|(_, r)| pred(r)).map(|(t, _)| *t).collect()
    }

    /// "METHOD /path?query" of every request so far, the target exactly as the client sent it
    /// (kube sends e.g. `GET /apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?&watch=true&...`).
    pub fn requests(&self) -> Vec<String> {
        lock(&self.shared).requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The requests so far that were GETs without `watch` (LISTs, and GETs of one object).
    pub fn list_requests(&self) -> Vec<String> {
        self.requests().into_iter().filter(|r| is_list_request(r)).collect()
    }

    /// The WATCH requests so far.
    pub fn watch_requests(&self) -> Vec<String> {
        self.requests().into_iter().filter(|r| is_watch_request(r)).collect()
    }

    /// Watch streams open right now.
    pub fn active_watches(&self) -> usize {
        lock(&self.shared).watches.len()
    }

    /// Blocks until at least `n` watch streams are open. Not for a current-thread async test
    /// that drives the client on the same thread: poll `active_watches` there.
    pub fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.active_watches() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.active_watches() >= n
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping the server inside an async test is fine.
            rt.shutdown_background();
        }
    }
}

fn query_param<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    let query = request.split_once('?')?.1;
    query.split('&').find_map(|p| p.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

pub fn is_watch_request(request: &str) -> bool {
    query_param(request, "watch").and_then(parse_bool).unwrap_or(false)
}

pub fn is_list_request(request: &str) -> bool {
    request.starts_with("GET ") && !is_watch_request(request) && !request.starts_with("GET /version")
}

fn abort_and_wait(handles: Vec<JoinHandle<()>>) {
    for h in &handles {
        h.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------------
// Object builders

/// A discovery.k8s.io/v1 EndpointSlice as the endpointslice controller writes it, for `service`.
/// `ready: None` leaves the conditions empty (which consumers must read as ready); `Some(r)`
/// sets ready and serving to r and terminating to false. No endpoints serialises as
/// `"endpoints": null`, as the real server does.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    slice: &str,
    family: &str,
    endpoints: &[(&str, Option<bool>)],
) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, ready))| {
            let conditions = match ready {
                Some(r) => json!({"ready": r, "serving": r, "terminating": false}),
                None => json!({}),
            };
            let pod = format!("{service}-{i}");
            json!({
                "addresses": [ip],
                "conditions": conditions,
                "nodeName": "node-1",
                "targetRef": {
                    "kind": "Pod",
                    "namespace": namespace,
                    "name": pod,
                    "uid": fake_uid(&format!("pod/{namespace}/{pod}"), 0),
                },
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice,
            "namespace": namespace,
            "generateName": format!("{service}-"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Service",
                "name": service,
                "uid": fake_uid(&format!("service/{namespace}/{service}"), 0),
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "addressType": family,
        "endpoints": if eps.is_empty() { Value::Null } else { Value::Array(eps) },
        "ports": [{"name": "registry", "port": 5000, "protocol": "TCP"}],
    })
}

/// A v1 Service of type ClusterIP with spec.clusterIP/clusterIPs/ipFamilies from `cluster_ips`;
/// no IPs makes it headless (`clusterIP: None`).
pub fn service(namespace: &str, name: &str, cluster_ips: &[&str]) -> Value {
    let (ips, families): (Vec<&str>, Vec<&str>) = if cluster_ips.is_empty() {
        (vec!["None"], vec!["IPv4"])
    } else {
        (cluster_ips.to_vec(), cluster_ips.iter().map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" }).collect())
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ips[0],
            "clusterIPs": ips,
            "ipFamilies": families,
            "ipFamilyPolicy": if ips.len() > 1 { "PreferDualStack" } else { "SingleStack" },
            "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "registry", "port": 5000, "protocol": "TCP", "targetPort": 5000}],
            "selector": {"app": name},
            "sessionAffinity": "None",
        },
        "status": {"loadBalancer": {}},
    })
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[derive(Clone, Debug)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Clone, Debug)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

#[derive(Clone, Debug, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    fn matches(&self, key: &ObjKey, obj: &Value) -> bool {
        if self.namespace.as_ref().is_some_and(|ns| *ns != key.namespace) {
            return false;
        }
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|f| {
                let actual = if f.field == "metadata.name" { &key.name } else { &key.namespace };
                (*actual == f.value) == f.equal
            })
    }
}

fn split_top_level_commas(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut reqs = Vec::new();
    for term in split_top_level_commas(s) {
        let bad = || format!("unable to parse requirement: found '{term}'");
        let req = if let Some(k) = term.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((lhs, rhs)) = term.split_once('(') {
            let words: Vec<&str> = lhs.split_whitespace().collect();
            let set = rhs.strip_suffix(')').ok_or_else(bad)?;
            let values: Vec<String> = set.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
            match words.as_slice() {
                [k, "in"] => LabelReq::In(k.to_string(), values),
                [k, "notin"] => LabelReq::NotIn(k.to_string(), values),
                _ => return Err(bad()),
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelReq::Eq(k.trim().into(), v.trim().into())
        } else {
            LabelReq::Exists(term.to_string())
        };
        let key = match &req {
            LabelReq::Eq(k, _)
            | LabelReq::NotEq(k, _)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _)
            | LabelReq::Exists(k)
            | LabelReq::NotExists(k) => k,
        };
        if !valid_label_key(key) {
            return Err(bad());
        }
        reqs.push(req);
    }
    Ok(reqs)
}

fn parse_field_selector(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{term}'"));
        };
        let field = field.trim();
        if field != "metadata.name" && field != "metadata.namespace" {
            return Err(format!("field label not supported: {field}"));
        }
        reqs.push(FieldReq { field: field.into(), value: value.trim().into(), equal });
    }
    Ok(reqs)
}

/// The event a watch should see for a write, following the cacher: a MODIFIED that makes the
/// object start matching is ADDED, one that makes it stop matching is DELETED (old object, new
/// resourceVersion).
fn watch_line_for(ty: &ResType, filter: &Filter, ev: &HistoryEvent) -> Option<String> {
    if ev.key.api_version != ty.api_version || ev.key.kind != ty.kind {
        return None;
    }
    let now = filter.matches(&ev.key, &ev.object);
    let (ty, obj) = match ev.ty {
        EventType::Added if now => ("ADDED", ev.object.clone()),
        EventType::Deleted if now => ("DELETED", ev.object.clone()),
        EventType::Modified => {
            let before = ev.prev.as_ref().is_some_and(|p| filter.matches(&ev.key, p));
            match (before, now) {
                (true, true) => ("MODIFIED", ev.object.clone()),
                (false, true) => ("ADDED", ev.object.clone()),
                (true, false) => {
                    let mut old = ev.prev.clone().unwrap();
                    old["metadata"]["resourceVersion"] = json!(ev.rv.to_string());
                    ("DELETED", old)
                }
                (false, false) => return None,
            }
        }
        _ => return None,
    };
    Some(event_line(ty, &obj))
}

fn event_line(ty: &str, obj: &Value) -> String {
    // Written by hand so "type" comes first, as the real server's encoder does.
    format!("{{\"type\":\"{ty}\",\"object\":{obj}}}\n")
}

// ---------------------------------------------------------------------------------------------
// HTTP

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    keep_alive: bool,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut st = lock(&shared);
        if !st.listening {
            continue;
        }
        let id = st.next_id();
        let task = tokio::spawn(serve_conn(shared.clone(), id, stream));
        st.conns.insert(id, Conn { task, watching: false });
    }
}

async fn serve_conn(shared: Arc<Shared>, id: u64, mut stream: TcpStream) {
    let mut buf = Vec::new();
    while let Ok(Some(req)) = read_request(&mut stream, &mut buf).await {
        lock(&shared).requests.push((Instant::now(), format!("{} {}", req.method, req.target)));
        let keep_alive = req.keep_alive;
        if handle(&shared, id, &mut stream, req).await.is_err() || !keep_alive {
            break;
        }
    }
    lock(&shared).conns.remove(&id);
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let request_line = lines.next().unwrap_or_default();
            let mut parts = request_line.split(' ');
            let (method, target, version) = (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            );
            let mut keep_alive = version == "HTTP/1.1";
            let mut content_length = 0usize;
            for line in lines {
                let Some((name, value)) = line.split_once(':') else { continue };
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
                    "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            // Discard a body (none of the supported requests has one).
            while buf.len() < content_length {
                let mut tmp = [0u8; 4096];
                let n = stream.read(&mut tmp).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            buf.drain(..content_length);
            let (path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
            let query = raw_query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect();
            return Ok(Some(Request { method, path: percent_decode(path), target, query, keep_alive }));
        }
        if buf.len() > 1 << 20 {
            return Err(io::Error::other("request head too large"));
        }
        let mut tmp = [0u8; 4096];
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_bool(s: &str) -> Option<bool> {
    // Go's strconv.ParseBool, which the real server uses.
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {},
        "code": code,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Internal Server Error",
    }
}

fn response_head(code: u16, extra: &str) -> String {
    format!(
        "HTTP/1.1 {code} {}\r\nAudit-Id: {}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\n\
         Date: {}\r\n{extra}\r\n",
        reason_phrase(code),
        fake_uid("audit", SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64),
        http_date(SystemTime::now()),
    )
}

async fn write_json(stream: &mut TcpStream, code: u16, body: &Value) -> io::Result<()> {
    let body = format!("{body}\n");
    let head = response_head(code, &format!("Content-Length: {}\r\n", body.len()));
    stream.write_all(format!("{head}{body}").as_bytes()).await
}

async fn write_chunk(stream: &mut TcpStream, line: &str) -> io::Result<()> {
    stream.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await
}

enum Route {
    Reply(u16, Value),
    /// An injected failure, with its Retry-After seconds.
    Failure(u16, Value, Option<u64>),
    Watch(WatchRequest),
}

/// The injected failure for this request, if any, counting it down.
fn take_failure(st: &mut State) -> Option<Failure> {
    let failure = st.failure.clone()?;
    match failure.remaining {
        None => {}
        Some(0) => {
            st.failure = None;
            return None;
        }
        Some(1) => st.failure = None,
        Some(n) => st.failure = Some(Failure { remaining: Some(n - 1), ..failure.clone() }),
    }
    Some(failure)
}

struct WatchRequest {
    ty: ResType,
    filter: Filter,
    resource_version: Option<String>,
    send_initial_events: Option<bool>,
    bookmarks: bool,
    timeout: Duration,
}

async fn handle(shared: &Arc<Shared>, conn: u64, stream: &mut TcpStream, req: Request) -> io::Result<()> {
    match route(shared, &req) {
        Route::Reply(code, body) => write_json(stream, code, &body).await,
        Route::Failure(code, body, retry_after) => {
            let retry = retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
            // The real server's throttling filters answer a 429 in plain text, not as a Status.
            let (body, content_type) = if code == 429 {
                ("Too many requests, please try again later.\n".to_string(), "text/plain; charset=utf-8")
            } else {
                (format!("{body}\n"), "application/json")
            };
            let head = response_head(code, &format!("{retry}Content-Length: {}\r\n", body.len()))
                .replace("application/json", content_type);
            stream.write_all(format!("{head}{body}").as_bytes()).await
        }
        Route::Watch(w) => serve_watch(shared, conn, stream, w).await,
    }
}

fn route(shared: &Shared, req: &Request) -> Route {
    let not_found = || Route::Reply(404, status(404, "NotFound", "the server could not find the requested resource"));
    if req.path == "/version" {
        return Route::Reply(
            200,
            json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
                "platform": "linux/amd64",
            }),
        );
    }
    if let Some(failure) = take_failure(&mut lock(shared)) {
        let code = failure.code;
        let (reason, message) = match code {
            401 => ("Unauthorized", "Unauthorized".to_string()),
            403 => (
                "Forbidden",
                format!(
                    "{} is forbidden: User \"system:serviceaccount:default:registry-dns\" cannot get this resource",
                    req.path
                ),
            ),
            429 => ("TooManyRequests", "Too many requests, please try again later.".to_string()),
            503 => ("ServiceUnavailable", "the server is currently unable to handle the request".to_string()),
            504 => ("Timeout", "the server was unable to return a response in the time allotted".to_string()),
            _ => ("InternalError", "Internal error occurred: injected failure".to_string()),
        };
        return Route::Failure(code, status(code, reason, &message), failure.retry_after);
    }
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return not_found(),
    };
    let (namespace, plural, name) = match rest {
        [p] => (None, *p, None),
        ["namespaces", ns, p] => (Some(ns.to_string()), *p, None),
        ["namespaces", ns, p, n] => (Some(ns.to_string()), *p, Some(*n)),
        _ => return not_found(),
    };
    let st = lock(shared);
    let Some(ty) = st.types.iter().find(|t| t.api_version == api_version && t.plural == plural).cloned() else {
        return not_found();
    };
    if req.method != "GET" {
        return Route::Reply(
            405,
            status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"),
        );
    }
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    let resource = if group.is_empty() { ty.plural.clone() } else { format!("{}.{group}", ty.plural) };
    if let Some(name) = name {
        let key = ObjKey {
            api_version: ty.api_version.clone(),
            kind: ty.kind.clone(),
            namespace: namespace.unwrap_or_default(),
            name: name.into(),
        };
        return match st.objects.get(&key) {
            Some(obj) => Route::Reply(200, obj.clone()),
            None => {
                let mut s = status(404, "NotFound", &format!("{resource} \"{name}\" not found"));
                s["details"] = json!({"name": name, "group": group, "kind": ty.plural});
                Route::Reply(404, s)
            }
        };
    }
    let labels = match req.param("labelSelector").map(parse_label_selector).transpose() {
        Ok(l) => l.unwrap_or_default(),
        Err(e) => return Route::Reply(400, status(400, "BadRequest", &e)),
    };
    let fields = match req.param("fieldSelector").map(parse_field_selector).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return Route::Reply(400, status(400, "BadRequest", &e)),
    };
    let filter = Filter { namespace, labels, fields };
    let watch = req.param("watch").and_then(parse_bool).unwrap_or(false);
    if watch {
        let send_initial_events = req.param("sendInitialEvents").and_then(parse_bool);
        let bookmarks = req.param("allowWatchBookmarks").and_then(parse_bool).unwrap_or(false);
        let rv_match = req.param("resourceVersionMatch").filter(|m| !m.is_empty());
        let mut invalid = Vec::new();
        if send_initial_events.is_some() {
            if rv_match != Some("NotOlderThan") {
                invalid.push("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan");
            }
            if !bookmarks {
                invalid.push(
                    "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
                );
            }
        } else if rv_match.is_some() {
            invalid.push("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided");
        }
        if !invalid.is_empty() {
            let msg = format!("ListOptions.meta.k8s.io \"\" is invalid: [{}]", invalid.join(", "));
            return Route::Reply(422, status(422, "Invalid", &msg));
        }
        let timeout = match req.param("timeoutSeconds") {
            Some(t) => match t.parse::<u64>() {
                // 0 means "no timeout asked for": the server's own default applies.
                Ok(0) => DEFAULT_WATCH_TIMEOUT,
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => return Route::Reply(400, status(400, "BadRequest", &format!("invalid timeoutSeconds: {t}"))),
            },
            None => DEFAULT_WATCH_TIMEOUT,
        };
        let resource_version = req.param("resourceVersion").filter(|v| !v.is_empty()).map(String::from);
        if let Some(rv) = &resource_version
            && rv.parse::<u64>().is_err()
        {
            return Route::Reply(400, status(400, "BadRequest", &format!("invalid resource version: {rv}")));
        }
        return Route::Watch(WatchRequest { ty, filter, resource_version, send_initial_events, bookmarks, timeout });
    }
    // LIST
    let limit: usize = req.param("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let (list_rv, after) = match req.param("continue").filter(|c| !c.is_empty()) {
        None => (st.rv, None),
        Some(token) => match decode_continue(token) {
            Some((rv, _, _)) if rv < st.compacted_rv => {
                let msg = "The provided continue parameter is too old to display a consistent list result. \
                           You can start a new list without the continue parameter.";
                return Route::Reply(410, status(410, "Expired", msg));
            }
            Some((rv, ns, name)) => (rv, Some((ns, name))),
            None => return Route::Reply(400, status(400, "BadRequest", "continue key is not valid")),
        },
    };
    let matching: Vec<(&ObjKey, &Value)> = st
        .objects
        .iter()
        .filter(|(k, v)| k.api_version == ty.api_version && k.kind == ty.kind && filter.matches(k, v))
        .filter(|(k, _)| {
            after
                .as_ref()
                .is_none_or(|(ns, name)| (k.namespace.as_str(), k.name.as_str()) > (ns.as_str(), name.as_str()))
        })
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    let page = if limit > 0 && matching.len() > limit {
        let last = matching[limit - 1].0;
        metadata["continue"] = json!(encode_continue(list_rv, &last.namespace, &last.name));
        metadata["remainingItemCount"] = json!(matching.len() - limit);
        &matching[..limit]
    } else {
        &matching[..]
    };
    let items: Vec<Value> = page
        .iter()
        .map(|(_, obj)| {
            let mut item = (*obj).clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    Route::Reply(
        200,
        json!({"kind": format!("{}List", ty.kind), "apiVersion": ty.api_version, "metadata": metadata, "items": items}),
    )
}

fn encode_continue(rv: u64, namespace: &str, name: &str) -> String {
    format!("{rv}\0{namespace}\0{name}").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok()).collect();
    let text = String::from_utf8(bytes?).ok()?;
    let mut parts = text.split('\0');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}

/// Removes the watch's subscription (and its connection's watching mark) however the watch ends.
struct WatchGuard<'a> {
    shared: &'a Shared,
    id: u64,
    conn: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(self.shared);
        st.watches.remove(&self.id);
        if let Some(c) = st.conns.get_mut(&self.conn) {
            c.watching = false;
        }
    }
}

fn bookmark(ty: &ResType, rv: u64, initial_events_end: bool) -> String {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line("BOOKMARK", &json!({"apiVersion": ty.api_version, "kind": ty.kind, "metadata": metadata}))
}

/// A watch under `stall_watches`: 200, then filler until the stall is lifted, then silence, and
/// never an end (the client must give up on it, or `drop_watches`/`stop` cut it).
async fn serve_stalled_watch(shared: &Arc<Shared>, conn: u64, stream: &mut TcpStream) -> io::Result<()> {
    if let Some(c) = lock(shared).conns.get_mut(&conn) {
        c.watching = true;
    }
    stream.write_all(response_head(200, "Transfer-Encoding: chunked\r\n").as_bytes()).await?;
    let mut config = shared.config.subscribe();
    loop {
        let stall = lock(shared).stall.clone();
        match stall {
            Some((filler, every)) => {
                write_chunk(stream, &filler).await?;
                tokio::time::sleep(every).await;
            }
            None => {
                if config.changed().await.is_err() {
                    return Err(io::Error::other("server gone"));
                }
            }
        }
    }
}

async fn serve_watch(shared: &Arc<Shared>, conn: u64, stream: &mut TcpStream, w: WatchRequest) -> io::Result<()> {
    if lock(shared).stall.is_some() {
        return serve_stalled_watch(shared, conn, stream).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut config = shared.config.subscribe();
    // Under one lock: what to replay, and the subscription for everything after it.
    let (initial, expired, id, mut last_sent) = {
        let mut st = lock(shared);
        let current = st.rv;
        let snapshot = |st: &State| -> Vec<String> {
            st.objects
                .iter()
                .filter(|(k, v)| k.api_version == w.ty.api_version && k.kind == w.ty.kind && w.filter.matches(k, v))
                .map(|(_, v)| event_line("ADDED", v))
                .collect()
        };
        let mut expired = None;
        let mut last_sent = current;
        let initial = match (w.resource_version.as_deref(), w.send_initial_events) {
            (_, Some(true)) => {
                let mut lines = snapshot(&st);
                lines.push(bookmark(&w.ty, current, true));
                lines
            }
            (None | Some("0"), None) => snapshot(&st),
            (None | Some("0"), Some(false)) => Vec::new(),
            (Some(rv), _) => {
                let rv: u64 = rv.parse().unwrap();
                if rv < st.compacted_rv {
                    let msg = format!("too old resource version: {rv} ({})", st.compacted_rv);
                    expired = Some(event_line("ERROR", &status(410, "Expired", &msg)));
                    Vec::new()
                } else {
                    let replay: Vec<_> = st.history.iter().filter(|e| e.rv > rv).collect();
                    last_sent = replay.last().map_or(rv, |e| e.rv);
                    replay.into_iter().filter_map(|e| watch_line_for(&w.ty, &w.filter, e)).collect()
                }
            }
        };
        let id = st.next_id();
        if expired.is_none() {
            let sub = WatchSub { conn, ty: w.ty.clone(), filter: w.filter.clone(), tx, bookmark_ceiling: None };
            st.watches.insert(id, sub);
            if let Some(c) = st.conns.get_mut(&conn) {
                c.watching = true;
            }
        }
        (initial, expired, id, last_sent)
    };
    let _guard = WatchGuard { shared, id, conn };
    stream.write_all(response_head(200, "Transfer-Encoding: chunked\r\n").as_bytes()).await?;
    if let Some(error) = expired {
        write_chunk(stream, &error).await?;
        return stream.write_all(b"0\r\n\r\n").await;
    }
    for line in &initial {
        write_chunk(stream, line).await?;
    }
    let start = tokio::time::Instant::now();
    // At most a year, so that start + limit cannot overflow.
    let settings = |st: &State| {
        let limit = w.timeout.min(st.watch_cap.unwrap_or(Duration::MAX)).min(Duration::from_secs(365 * 86400));
        (limit, st.bookmark_interval)
    };
    let (mut limit, mut interval) = settings(&lock(shared));
    let mut next_bookmark = start + interval;
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((rv, line)) => {
                    write_chunk(stream, &line).await?;
                    last_sent = last_sent.max(rv);
                }
                // Unsubscribed by stop()/drop_watches(): the connection is being dropped.
                None => return Err(io::Error::other("watch dropped")),
            },
            _ = tokio::time::sleep_until(next_bookmark), if w.bookmarks => {
                let (rv, pending) = {
                    let st = lock(shared);
                    let Some(sub) = st.watches.get(&id) else { return Err(io::Error::other("watch dropped")) };
                    let rv = sub.bookmark_ceiling.map_or(st.rv, |c| c.min(st.rv));
                    // Everything up to st.rv was queued under this lock: send it before the
                    // bookmark, so a bookmark never runs ahead of an event not yet delivered.
                    let mut pending = Vec::new();
                    while let Ok(item) = rx.try_recv() {
                        pending.push(item);
                    }
                    (rv, pending)
                };
                for (ev_rv, line) in pending {
                    write_chunk(stream, &line).await?;
                    last_sent = last_sent.max(ev_rv);
                }
                if rv >= last_sent {
                    write_chunk(stream, &bookmark(&w.ty, rv, false)).await?;
                    last_sent = rv;
                }
                next_bookmark = tokio::time::Instant::now() + interval;
            }
            _ = tokio::time::sleep_until(start + limit) => {
                return stream.write_all(b"0\r\n\r\n").await;
            }
            changed = config.changed() => {
                if changed.is_err() {
                    return Err(io::Error::other("server gone"));
                }
                (limit, interval) = settings(&lock(shared));
                next_bookmark = next_bookmark.min(tokio::time::Instant::now() + interval);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn fake_uid(seed: &str, n: u64) -> String {
    // FNV-1a, good enough for distinct, stable, UUID-shaped strings.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in seed.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let g = h.rotate_left(17) ^ n;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        g & 0xfff,
        (g >> 12) & 0xffff_ffff_ffff
    )
}

fn civil(t: SystemTime) -> (i64, u32, u32, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, days as u64, rem)
}

fn rfc3339(t: SystemTime) -> String {
    let (y, m, d, _, rem) = civil(t);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (y, m, d, days, rem) = civil(t);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[m as usize - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
