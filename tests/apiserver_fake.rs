//! The fake API server (tests/support/apiserver.rs) checked with kube's own client, watcher and
//! reflector, plus its wire format read raw off the socket.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::{FakeApiServer, endpoint_slice, service};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "registry";
const SVC_LABEL: &str = "kubernetes.io/service-name=registry";

async fn client(server: &FakeApiServer) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("fake-apiserver-{}-{}", std::process::id(), server.addr().port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path);
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube accepts the kubeconfig");
    assert_eq!(config.default_namespace, "default");
    kube::Client::try_from(config).unwrap()
}

/// Polls `ready` for up to 20 s without blocking the test's runtime.
async fn eventually(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ips(slice: &EndpointSlice) -> Vec<String> {
    slice.endpoints.iter().flat_map(|e| e.addresses.clone()).collect()
}

/// Watcher errors as (kind, Status code).
type ErrorLog = Arc<Mutex<Vec<(&'static str, Option<u16>)>>>;

/// A watcher (kube's default backoff; registry-dns caps its own) feeding a reflector, driven on a task;
/// errors are recorded as (kind, HTTP/Status code).
struct Reflected<K: kube::Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    errors: ErrorLog,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Reflected<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let stream = watcher(api, config).default_backoff().reflect(writer);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    let entry = match &e {
                        watcher::Error::InitialListFailed(_) => ("InitialListFailed", None),
                        watcher::Error::WatchStartFailed(_) => ("WatchStartFailed", None),
                        watcher::Error::WatchError(status) => ("WatchError", Some(status.code)),
                        watcher::Error::WatchFailed(_) => ("WatchFailed", None),
                        watcher::Error::NoResourceVersion => ("NoResourceVersion", None),
                    };
                    seen.lock().unwrap().push(entry);
                }
            }
        });
        Self { store, errors, task }
    }

    fn errors(&self) -> Vec<(&'static str, Option<u16>)> {
        self.errors.lock().unwrap().clone()
    }

    fn names(&self) -> BTreeSet<String> {
        self.store.state().iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect()
    }
}

impl<K: kube::Resource<DynamicType = ()> + 'static> Drop for Reflected<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn slice_ips(store: &Store<EndpointSlice>) -> BTreeSet<String> {
    store.state().iter().flat_map(|s| ips(s)).collect()
}

#[tokio::test]
async fn list_filters_by_label_field_and_namespace_and_pages() {
    let server = FakeApiServer::start();
    server.apply(endpoint_slice(
        NS,
        "registry",
        "registry-abc",
        "IPv4",
        &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(false))],
    ));
    server.apply(endpoint_slice(NS, "registry", "registry-v6", "IPv6", &[("fd00::1", None)]));
    server.apply(endpoint_slice(NS, "registry", "registry-empty", "IPv4", &[]));
    server.apply(endpoint_slice(NS, "other", "other-1", "IPv4", &[("10.0.0.9", Some(true))]));
    server.apply(endpoint_slice("elsewhere", "registry", "registry-zzz", "IPv4", &[("10.1.0.1", Some(true))]));
    server.apply(service(NS, "registry", &["10.96.0.10", "fd00:96::10"]));
    server.apply(service(NS, "other", &[]));
    let client = client(&server).await;

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let list = slices.list(&ListParams::default().labels(SVC_LABEL)).await.unwrap();
    assert_eq!(list.metadata.resource_version, Some(server.resource_version().to_string()));
    let names: Vec<_> = list.items.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["registry-abc", "registry-empty", "registry-v6"]);
    let abc = &list.items[0];
    assert_eq!(abc.address_type, "IPv4");
    assert_eq!(ips(abc), ["10.0.0.1", "10.0.0.2"]);
    let ready: Vec<_> = abc.endpoints.iter().map(|e| e.conditions.as_ref().and_then(|c| c.ready)).collect();
    assert_eq!(ready, [Some(true), Some(false)]);
    assert_eq!(abc.ports.as_ref().unwrap()[0].port, Some(5000));
    assert_eq!(abc.ports.as_ref().unwrap()[0].name.as_deref(), Some("registry"));
    assert!(abc.metadata.resource_version.is_some() && abc.metadata.uid.is_some());
    assert!(abc.metadata.creation_timestamp.is_some());
    assert!(list.items[1].endpoints.is_empty(), "endpoints: null reads as no endpoints");
    let v6 = &list.items[2];
    assert_eq!((v6.address_type.as_str(), ips(v6)), ("IPv6", vec!["fd00::1".to_string()]));
    assert_eq!(v6.endpoints[0].conditions.as_ref().unwrap().ready, None);

    // Set-based and negative selectors, and the cluster-wide path.
    let both =
        slices.list(&ListParams::default().labels("kubernetes.io/service-name in (registry,other)")).await.unwrap();
    assert_eq!(both.items.len(), 4);
    let not = slices.list(&ListParams::default().labels("kubernetes.io/service-name!=registry")).await.unwrap();
    assert_eq!(not.items.len(), 1);
    let everywhere: Api<EndpointSlice> = Api::all(client.clone());
    let all = everywhere.list(&ListParams::default().labels(SVC_LABEL)).await.unwrap();
    assert_eq!(all.items.len(), 4);
    let in_ns = everywhere.list(&ListParams::default().fields("metadata.namespace=elsewhere")).await.unwrap();
    assert_eq!(in_ns.items.len(), 1);

    // Pagination: kube's continue tokens walk the whole set.
    let mut paged = Vec::new();
    let mut lp = ListParams::default().labels(SVC_LABEL).limit(1);
    loop {
        let page = everywhere.list(&lp).await.unwrap();
        assert!(page.items.len() <= 1);
        paged.extend(page.items.iter().map(|s| s.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(paged, ["registry-zzz", "registry-abc", "registry-empty", "registry-v6"], "in (namespace, name) order");

    // Services by name.
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let by_name = services.list(&ListParams::default().fields("metadata.name=registry")).await.unwrap();
    assert_eq!(by_name.items.len(), 1);
    let spec = by_name.items[0].spec.clone().unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(spec.cluster_ips.unwrap(), ["10.96.0.10", "fd00:96::10"]);
    assert_eq!(spec.ip_families.unwrap(), ["IPv4", "IPv6"]);
    let headless = services.get("other").await.unwrap();
    assert_eq!(headless.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    // Errors come back as Status objects kube understands.
    match services.get("missing").await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (404, "NotFound")),
        other => panic!("expected a 404, got {other:?}"),
    }
    match services.list(&ListParams::default().fields("spec.clusterIP=1.2.3.4")).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(client.apiserver_version().await.unwrap().git_version.starts_with("v1.33"));
}

#[tokio::test]
async fn watch_sends_added_modified_deleted_and_bookmarks() {
    let server = FakeApiServer::start();
    server.set_bookmark_interval(Duration::from_millis(300));
    let client = client(&server).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client, NS);
    let rv = slices.list(&ListParams::default().labels(SVC_LABEL)).await.unwrap().metadata.resource_version.unwrap();
    let stream = slices.watch(&WatchParams::default().labels(SVC_LABEL).timeout(60), &rv).await.unwrap();
    let mut stream = stream.boxed();
    eventually("the watch to open", || server.active_watches() == 1).await;

    // Next non-bookmark event.
    async fn next<S>(stream: &mut S) -> WatchEvent<EndpointSlice>
    where
        S: futures::Stream<Item = kube::Result<WatchEvent<EndpointSlice>>> + Unpin,
    {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
                .await
                .expect("an event in time")
                .unwrap()
                .expect("stream open");
            if !matches!(event, WatchEvent::Bookmark(_)) {
                return event;
            }
        }
    }
    let rv_of = |s: &EndpointSlice| s.metadata.resource_version.clone().unwrap();

    let created = server.apply(endpoint_slice(NS, "registry", "registry-abc", "IPv4", &[("10.0.0.1", Some(true))]));
    match next(&mut stream).await {
        WatchEvent::Added(s) => {
            assert_eq!(ips(&s), ["10.0.0.1"]);
            assert_eq!(rv_of(&s), created["metadata"]["resourceVersion"]);
        }
        other => panic!("expected ADDED, got {other:?}"),
    }
    // Another service's slice is not seen; a no-op apply writes nothing.
    server.apply(endpoint_slice(NS, "other", "other-1", "IPv4", &[("10.0.0.9", Some(true))]));
    let before = server.resource_version();
    server.apply(endpoint_slice(NS, "registry", "registry-abc", "IPv4", &[("10.0.0.1", Some(true))]));
    assert_eq!(server.resource_version(), before, "an identical apply is a no-op");
    server.apply(endpoint_slice(NS, "registry", "registry-abc", "IPv4", &[("10.0.0.2", Some(false))]));
    match next(&mut stream).await {
        WatchEvent::Modified(s) => {
            assert_eq!(ips(&s), ["10.0.0.2"]);
            assert_eq!(s.endpoints[0].conditions.as_ref().unwrap().ready, Some(false));
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    // Moving out of the selector is a DELETED, moving back an ADDED.
    server.apply(endpoint_slice(NS, "moved", "registry-abc", "IPv4", &[("10.0.0.2", Some(false))]));
    match next(&mut stream).await {
        WatchEvent::Deleted(s) => assert_eq!(rv_of(&s), server.resource_version().to_string()),
        other => panic!("expected DELETED, got {other:?}"),
    }
    server.apply(endpoint_slice(NS, "registry", "registry-abc", "IPv4", &[("10.0.0.3", Some(true))]));
    assert!(matches!(next(&mut stream).await, WatchEvent::Added(s) if ips(&s) == ["10.0.0.3"]));
    assert!(server.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "registry-abc"));
    match next(&mut stream).await {
        WatchEvent::Deleted(s) => {
            assert_eq!(s.metadata.name.as_deref(), Some("registry-abc"));
            assert_eq!(rv_of(&s), server.resource_version().to_string());
        }
        other => panic!("expected DELETED, got {other:?}"),
    }
    // Bookmarks carry the current resourceVersion.
    let current = server.resource_version().to_string();
    let bookmark = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let WatchEvent::Bookmark(b) = stream.try_next().await.unwrap().unwrap() {
                return b;
            }
        }
    })
    .await
    .expect("a bookmark");
    assert_eq!(bookmark.metadata.resource_version, current);
    assert_eq!(bookmark.types.kind, "EndpointSlice");

    // The request kube sent.
    let watch = server.watch_requests().pop().unwrap();
    assert!(watch.starts_with(&format!("GET /apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices?")));
    for part in ["watch=true", "timeoutSeconds=60", "allowWatchBookmarks=true", &format!("resourceVersion={rv}")] {
        assert!(watch.contains(part), "{watch} lacks {part}");
    }
}

#[tokio::test]
async fn watch_replays_history_from_a_resource_version() {
    let server = FakeApiServer::start();
    let client = client(&server).await;
    let slices: Api<EndpointSlice> = Api::namespaced(client, NS);
    let start = server.resource_version().to_string();
    server.apply(endpoint_slice(NS, "registry", "a", "IPv4", &[("10.0.0.1", Some(true))]));
    server.apply(endpoint_slice(NS, "registry", "a", "IPv4", &[("10.0.0.2", Some(true))]));
    server.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "a");
    let wp = WatchParams::default().labels(SVC_LABEL).disable_bookmarks().timeout(1);
    let events: Vec<_> = slices.watch(&wp, &start).await.unwrap().try_collect().await.unwrap();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        })
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"], "replayed, then a clean end at timeoutSeconds");

    // From an expired version: one ERROR event with a 410 Status, then the stream ends.
    server.compact();
    let events: Vec<_> = slices.watch(&wp, &start).await.unwrap().try_collect().await.unwrap();
    match events.as_slice() {
        [WatchEvent::Error(status)] => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert_eq!(status.message, format!("too old resource version: {start} ({})", server.resource_version()));
        }
        other => panic!("expected one 410 ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn reflector_follows_slices_and_a_service_by_name() {
    let server = FakeApiServer::start();
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.1", Some(true))]));
    server.apply(endpoint_slice(NS, "other", "other-a", "IPv4", &[("10.0.0.9", Some(true))]));
    server.apply(service(NS, "registry", &["10.96.0.10"]));
    server.apply(service(NS, "other", &["10.96.0.11"]));
    let client = client(&server).await;
    let slices = Reflected::start(
        Api::<EndpointSlice>::namespaced(client.clone(), NS),
        watcher::Config::default().labels(SVC_LABEL),
    );
    let services = Reflected::start(
        Api::<Service>::namespaced(client.clone(), NS),
        watcher::Config::default().fields("metadata.name=registry"),
    );
    tokio::time::timeout(Duration::from_secs(10), slices.store.wait_until_ready()).await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(10), services.store.wait_until_ready()).await.unwrap().unwrap();
    assert_eq!(slice_ips(&slices.store), BTreeSet::from(["10.0.0.1".to_string()]));
    assert_eq!(services.names(), BTreeSet::from(["registry".to_string()]));

    server.apply(endpoint_slice(NS, "registry", "registry-b", "IPv6", &[("fd00::2", Some(true))]));
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.5", Some(true))]));
    server.apply(service(NS, "registry", &["10.96.0.20"]));
    server.apply(service(NS, "other", &["10.96.0.21"]));
    let want: BTreeSet<String> = ["10.0.0.5", "fd00::2"].map(String::from).into();
    eventually("slice changes", || slice_ips(&slices.store) == want).await;
    let cluster_ip = || services.store.state().first().and_then(|s| s.spec.as_ref()?.cluster_ip.clone());
    eventually("the service change", || cluster_ip().as_deref() == Some("10.96.0.20")).await;

    server.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "registry-a");
    server.delete("v1", "Service", NS, "registry");
    eventually("deletes", || slice_ips(&slices.store) == BTreeSet::from(["fd00::2".to_string()])).await;
    eventually("the service delete", || services.store.is_empty()).await;
    assert_eq!(slices.errors(), []);
    assert_eq!(services.errors(), []);

    // What kube's watcher asks for: one paginated LIST, then WATCH from the list's version.
    let requests = server.requests();
    let svc_list = requests.iter().find(|r| r.starts_with("GET /api/v1/namespaces/registry/services?")).unwrap();
    assert!(
        svc_list.contains("fieldSelector=metadata.name%3Dregistry") && svc_list.contains("limit=500"),
        "{svc_list}"
    );
    let slice_watch = server.watch_requests().into_iter().find(|r| r.contains("endpointslices")).unwrap();
    assert!(slice_watch.contains("labelSelector=kubernetes.io%2Fservice-name%3Dregistry"), "{slice_watch}");
    assert!(slice_watch.contains("timeoutSeconds=290") && slice_watch.contains("allowWatchBookmarks=true"));
    assert!(!slice_watch.contains("sendInitialEvents"), "{slice_watch}");
    assert_eq!(server.list_requests().len(), 2, "{requests:#?}");
}

#[tokio::test]
async fn compaction_then_dropped_watch_gives_410_and_a_relist() {
    let (server, slices) = watched(&[("registry-a", "10.0.0.1")]).await;
    assert_eq!(server.list_requests().len(), 1);

    server.compact();
    assert_eq!(server.drop_watches(), 1);
    // The watcher re-watches from its last version, gets the 410 and lists again.
    eventually("a 410 and a relist", || {
        slices.errors().contains(&("WatchError", Some(410))) && server.list_requests().len() == 2
    })
    .await;
    eventually("the new watch", || server.active_watches() == 1).await;
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.2", Some(true))]));
    eventually("the change after the relist", || slice_ips(&slices.store) == BTreeSet::from(["10.0.0.2".into()])).await;
    assert_eq!(slices.errors(), [("WatchError", Some(410))]);
}

/// A fake API server with the given `(slice, ip)` slices of the registry Service, and a
/// reflector that has listed them and is watching.
async fn watched(slices: &[(&str, &str)]) -> (FakeApiServer, Reflected<EndpointSlice>) {
    let server = FakeApiServer::start();
    for (slice, ip) in slices {
        server.apply(endpoint_slice(NS, "registry", slice, "IPv4", &[(ip, Some(true))]));
    }
    let client = client(&server).await;
    let slices =
        Reflected::start(Api::<EndpointSlice>::namespaced(client, NS), watcher::Config::default().labels(SVC_LABEL));
    tokio::time::timeout(Duration::from_secs(10), slices.store.wait_until_ready()).await.unwrap().unwrap();
    eventually("the watch to open", || server.active_watches() == 1).await;
    (server, slices)
}

#[tokio::test]
async fn outage_resumes_the_watch_from_history() {
    let (server, slices) = watched(&[("registry-a", "10.0.0.1"), ("registry-b", "10.0.0.2")]).await;

    server.stop();
    assert!(std::net::TcpStream::connect(server.addr()).is_err(), "stopped means connection refused");
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.3", Some(true))]));
    server.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "registry-b");
    server.apply(endpoint_slice(NS, "registry", "registry-c", "IPv4", &[("10.0.0.4", Some(true))]));
    eventually("a failed re-watch", || slices.errors().contains(&("WatchStartFailed", None))).await;
    assert_eq!(slice_ips(&slices.store).len(), 2, "the store keeps its state through the outage");
    server.restart();

    let want: BTreeSet<String> = ["10.0.0.3", "10.0.0.4"].map(String::from).into();
    eventually("recovery", || slice_ips(&slices.store) == want).await;
    assert_eq!(server.list_requests().len(), 1, "resumed from history without a relist: {:#?}", server.requests());
    assert!(slices.errors().iter().all(|e| *e == ("WatchStartFailed", None)), "{:?}", slices.errors());
}

#[tokio::test]
async fn outage_past_compaction_relists_to_the_right_state() {
    let (server, slices) = watched(&[("registry-a", "10.0.0.1"), ("registry-b", "10.0.0.2")]).await;

    server.stop();
    server.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "registry-b");
    server.apply(endpoint_slice(NS, "registry", "registry-c", "IPv4", &[("10.0.0.3", Some(true))]));
    server.compact();
    server.restart();

    let want: BTreeSet<String> = ["10.0.0.1", "10.0.0.3"].map(String::from).into();
    eventually("the relisted state", || slice_ips(&slices.store) == want).await;
    assert!(slices.errors().contains(&("WatchError", Some(410))), "{:?}", slices.errors());
    assert_eq!(server.list_requests().len(), 2);
}

#[tokio::test]
async fn watch_timeout_ends_cleanly_and_the_watcher_rewatches() {
    let (server, slices) = watched(&[("registry-a", "10.0.0.1")]).await;

    // Applies to the open watch too.
    server.set_watch_timeout(Duration::from_millis(400));
    eventually("three re-watches", || server.watch_requests().len() >= 4).await;
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.2", Some(true))]));
    eventually("the change", || slice_ips(&slices.store) == BTreeSet::from(["10.0.0.2".into()])).await;
    assert_eq!(server.list_requests().len(), 1, "a clean end re-watches without a relist");
    assert_eq!(slices.errors(), [], "a clean end is no error");
    // Each re-watch resumes from the version the previous one reached (bookmarks included).
    let versions: Vec<u64> = server
        .watch_requests()
        .iter()
        .map(|r| r.rsplit_once("resourceVersion=").unwrap().1.split('&').next().unwrap().parse().unwrap())
        .collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
}

#[tokio::test]
async fn streaming_list_mode_works_too() {
    let server = FakeApiServer::start();
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.1", Some(true))]));
    let client = client(&server).await;
    let slices = Reflected::start(
        Api::<EndpointSlice>::namespaced(client, NS),
        watcher::Config::default().labels(SVC_LABEL).streaming_lists(),
    );
    tokio::time::timeout(Duration::from_secs(10), slices.store.wait_until_ready()).await.unwrap().unwrap();
    assert_eq!(slice_ips(&slices.store), BTreeSet::from(["10.0.0.1".into()]));
    server.apply(endpoint_slice(NS, "registry", "registry-b", "IPv4", &[("10.0.0.2", Some(true))]));
    eventually("the change", || slice_ips(&slices.store).len() == 2).await;
    let first = &server.requests()[0];
    assert!(first.contains("sendInitialEvents=true") && first.contains("resourceVersionMatch=NotOlderThan"), "{first}");
    assert_eq!(server.list_requests().len(), 0);
    assert_eq!(slices.errors(), []);
}

// ---------------------------------------------------------------------------------------------
// The wire format, read raw.

/// Sends a GET and reads until the server closes (or `stop` says the response is complete).
async fn raw_get(addr: SocketAddr, target: &str, close: bool) -> (tokio::net::TcpStream, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: {connection}\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    if close {
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut text)).await.unwrap().unwrap();
    }
    (conn, text)
}

fn split_response(raw: &str) -> (&str, &str) {
    raw.split_once("\r\n\r\n").expect("a complete head")
}

/// Decodes a chunked body; returns the chunks and whether the final chunk was there.
fn dechunk(mut body: &str) -> (Vec<String>, bool) {
    let mut chunks = Vec::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).expect("hex chunk size");
        if size == 0 {
            assert_eq!(rest, "\r\n");
            return (chunks, true);
        }
        chunks.push(rest[..size].to_string());
        assert_eq!(&rest[size..size + 2], "\r\n");
        body = &rest[size + 2..];
    }
    assert!(body.is_empty(), "a partial chunk: {body:?}");
    (chunks, false)
}

#[tokio::test]
async fn wire_format_of_lists_watches_and_errors() {
    let server = FakeApiServer::start();
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.1", Some(true))]));
    let addr = server.addr();
    let base = format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices");

    let (_, raw) = raw_get(addr, "/apis/example.com/v1/namespaces/x/things", true).await;
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    let status: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!((status["kind"].as_str(), status["code"].as_u64()), (Some("Status"), Some(404)));

    let (_, raw) = raw_get(addr, &format!("{base}?labelSelector=kubernetes.io%2Fservice-name%3Dregistry"), true).await;
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Content-Type: application/json"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
    let list: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(list["kind"], "EndpointSliceList");
    assert_eq!(list["metadata"]["resourceVersion"], server.resource_version().to_string());
    assert!(list["items"][0].get("kind").is_none(), "list items carry no kind, as the real server's");

    // A watch from "0" starts with the current state, ends cleanly at timeoutSeconds.
    let t0 = Instant::now();
    let (_, raw) = raw_get(addr, &format!("{base}?watch=1&resourceVersion=0&timeoutSeconds=1"), true).await;
    assert!(t0.elapsed() >= Duration::from_millis(900));
    let (head, body) = split_response(&raw);
    assert!(head.contains("Transfer-Encoding: chunked") && !head.contains("Content-Length"), "{head}");
    let (chunks, complete) = dechunk(body);
    assert!(complete, "a clean end has the final chunk");
    assert!(chunks[0].starts_with("{\"type\":\"ADDED\",\"object\":{") && chunks[0].ends_with("}\n"), "{chunks:?}");
    let event: serde_json::Value = serde_json::from_str(&chunks[0]).unwrap();
    assert_eq!(event["object"]["kind"], "EndpointSlice");

    // A dropped watch ends without the final chunk.
    let rv = server.resource_version();
    let (mut conn, _) = raw_get(addr, &format!("{base}?watch=true&resourceVersion={rv}"), false).await;
    eventually("the raw watch", || server.active_watches() == 1).await;
    server.apply(endpoint_slice(NS, "registry", "registry-b", "IPv4", &[("10.0.0.2", Some(true))]));
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("}\n\r\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the watch ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(server.drop_watches(), 1);
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut seen)).await.unwrap().unwrap();
    let raw = String::from_utf8(seen).unwrap();
    let (_, body) = split_response(&raw);
    let (chunks, complete) = dechunk(body);
    assert!(!complete, "an abrupt drop has no final chunk");
    assert!(chunks[0].starts_with("{\"type\":\"ADDED\""));

    // sendInitialEvents needs resourceVersionMatch=NotOlderThan, as on the real server.
    let (_, raw) =
        raw_get(addr, &format!("{base}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"), true).await;
    assert!(raw.starts_with("HTTP/1.1 422 "), "{raw}");
    assert!(server.requests().iter().all(|r| r.starts_with("GET /")));
}

#[tokio::test]
async fn a_forbidding_server_fails_the_list_until_it_allows() {
    let server = FakeApiServer::start();
    server.apply(endpoint_slice(NS, "registry", "registry-a", "IPv4", &[("10.0.0.1", Some(true))]));
    server.fail_requests(Some(403));
    let client = client(&server).await;
    let slices =
        Reflected::start(Api::<EndpointSlice>::namespaced(client, NS), watcher::Config::default().labels(SVC_LABEL));
    eventually("a failed list", || slices.errors().contains(&("InitialListFailed", None))).await;
    assert!(slices.store.state().is_empty());
    server.fail_requests(None);
    tokio::time::timeout(Duration::from_secs(20), slices.store.wait_until_ready()).await.unwrap().unwrap();
    assert_eq!(slice_ips(&slices.store), BTreeSet::from(["10.0.0.1".into()]));
}

/// The server as the registry-dns tests use it: from a plain synchronous test, no runtime around.
#[test]
fn usable_from_a_synchronous_test() {
    use std::io::{Read, Write};
    let get = |addr: SocketAddr, target: &str| -> String {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(conn, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    };
    let server = FakeApiServer::start();
    server.apply(service(NS, "registry", &["10.96.0.10"]));
    let dir = std::env::temp_dir().join(format!("fake-apiserver-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    server.write_kubeconfig_with_namespace(&dir.join("kubeconfig"), NS);
    let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        kubeconfig.contains(&format!("server: http://{}", server.addr())) && kubeconfig.contains("namespace: registry")
    );

    let target = format!("/api/v1/namespaces/{NS}/services?fieldSelector=metadata.name%3Dregistry");
    let raw = get(server.addr(), &target);
    let (head, body) = split_response(&raw);
    assert!(head.lines().any(|l| l.starts_with("Date: ") && l.ends_with(" GMT")), "{head}");
    let list: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["items"][0]["spec"]["clusterIP"], "10.96.0.10");

    server.stop();
    assert!(std::net::TcpStream::connect(server.addr()).is_err());
    server.restart();
    assert!(get(server.addr(), &target).starts_with("HTTP/1.1 200 OK"));
    assert_eq!(server.list_requests(), [format!("GET {target}"), format!("GET {target}")]);
}
