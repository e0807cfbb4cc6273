//! The rules on crafted findings: the cases tests/doctor.rs cannot set up in a namespace (a pod
//! behind NodeLocal DNSCache, a slow lookup, registry-dns's own failures), and the exit codes.

use std::path::PathBuf;

use super::*;
use crate::doctor::resolver_setup::{Nsswitch, Paths, ResolvConf, ResolvedSettings, hosts_entries};

const NAME: &str = "knative-local-registry";

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn answer(list: &[&str]) -> Reply {
    Reply::Answer { rcode: ResponseCode::NoError, authoritative: true, addresses: addrs(list) }
}

fn rcode(rcode: ResponseCode) -> Reply {
    Reply::Answer { rcode, authoritative: false, addresses: BTreeSet::new() }
}

/// A node with `resolv_conf` and `hosts`, nameservers answering `nameservers` in order,
/// registry-dns answering 10.0.0.10 and getaddrinfo returning `system` after 5 ms.
fn findings(resolv_conf: &str, hosts: &str, nameservers: Vec<Reply>, system: Result<&[&str], &str>) -> Findings {
    let resolv = ResolvConf::parse(resolv_conf.as_bytes());
    let setup = ResolverSetup {
        paths: Paths {
            resolv_conf: "/etc/resolv.conf".into(),
            nsswitch: "/etc/nsswitch.conf".into(),
            hosts: "/etc/hosts".into(),
            resolved_conf: "/etc/systemd/resolved.conf".into(),
            resolved_dropin_dirs: vec![PathBuf::from("/etc/systemd/resolved.conf.d")],
        },
        resolv_conf: Ok(resolv.clone()),
        nsswitch: Nsswitch::parse(Some("hosts: files dns\n")),
        hosts_entries: Ok(hosts_entries(hosts, NAME)),
        resolved: ResolvedSettings::default(),
        resolved_running: false,
    };
    Findings {
        name: NAME.into(),
        server: "169.254.20.25:53".parse().unwrap(),
        timeout: Duration::from_secs(2),
        nameservers: resolv.nameservers.iter().copied().zip(nameservers).collect(),
        setup,
        resolved: None,
        search_answers: Vec::new(),
        direct: answer(&["10.0.0.10"]),
        system: SystemLookup { result: system.map(addrs).map_err(String::from), took: Duration::from_millis(5) },
    }
}

fn line<'a>(report: &'a Report, text: &str) -> &'a Check {
    report.checks.iter().find(|c| c.text.contains(text)).unwrap_or_else(|| panic!("no `{text}` in\n{report}"))
}

#[test]
fn exit_codes_follow_the_comparison() {
    let same = findings("nameserver 169.254.20.25\n", "", vec![answer(&["10.0.0.10"])], Ok(&["10.0.0.10"]));
    assert_eq!(judge(&same).outcome.exit_code(), 0);
    let mut other = same.clone();
    other.system.result = Ok(addrs(&["10.0.0.10", "10.0.0.11"]));
    assert_eq!(judge(&other).outcome.exit_code(), 1, "a superset is not the same");
    let mut failed = same.clone();
    failed.system.result = Err("Name or service not known".into());
    assert_eq!(judge(&failed).outcome.exit_code(), 1);
    for direct in [rcode(ResponseCode::NXDomain), rcode(ResponseCode::NoError), Reply::Silent] {
        let mut no_reference = same.clone();
        no_reference.direct = direct;
        assert_eq!(judge(&no_reference).outcome.exit_code(), 3);
    }
}

#[test]
fn the_fix_for_a_nameserver_depends_on_what_it_is() {
    let pod = "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\n\
               options ndots:5\n";
    let report = judge(&findings(pod, "", vec![rcode(ResponseCode::NXDomain)], Err("not found")));
    let check = line(&report, "nameserver 10.96.0.10 answers NXDOMAIN");
    assert_eq!(check.severity, Severity::Problem);
    assert!(check.fix.as_ref().unwrap().contains("deploy/coredns/patch-corefile.sh add)"), "{report}");

    let node_local = pod.replace("10.96.0.10", "169.254.20.10");
    let report = judge(&findings(&node_local, "", vec![rcode(ResponseCode::NXDomain)], Err("not found")));
    let fix = line(&report, "nameserver 169.254.20.10 answers").fix.clone().unwrap();
    assert!(fix.contains("NodeLocal DNSCache") && fix.contains("--configmap node-local-dns"), "{fix}");

    let node = "nameserver 192.168.1.1\nnameserver 169.254.20.25\n";
    let report = judge(&findings(node, "", vec![rcode(ResponseCode::NXDomain), answer(&["10.0.0.10"])], Err("x")));
    let fix = line(&report, "nameserver 192.168.1.1 answers").fix.clone().unwrap();
    assert!(fix.starts_with("make registry-dns (169.254.20.25) the first nameserver"), "{fix}");
    let fallback = line(&report, "nameserver 169.254.20.25 answers");
    assert_eq!(fallback.severity, Severity::Ok, "glibc never asks it: {report}");
}

#[test]
fn glibc_moves_past_servfail_and_silence_to_the_deciding_nameserver() {
    let conf = "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 169.254.20.25\n";
    let replies = vec![Reply::Silent, rcode(ResponseCode::ServFail), answer(&["10.0.0.10"])];
    let mut f = findings(conf, "", replies, Ok(&["10.0.0.10"]));
    f.system.took = Duration::from_millis(5200);
    let report = judge(&f);
    assert_eq!(line(&report, "nameserver 10.0.0.1 does not answer").severity, Severity::Problem);
    assert!(line(&report, "nameserver 10.0.0.2 answers SERVFAIL").text.contains("moves on to the next"));
    assert_eq!(line(&report, "nameserver 169.254.20.25 answers").severity, Severity::Ok);
    let slow = line(&report, "getaddrinfo(");
    assert!(slow.severity == Severity::Warn && slow.text.contains("took 5.2 s"), "{report}");
    assert_eq!(report.outcome, Comparison::Same, "slow, but the same answer");
}

#[test]
fn a_hosts_entry_equal_to_registry_dns_is_a_warning_not_a_failure() {
    let f = findings(
        "nameserver 169.254.20.25\n",
        "10.0.0.10 knative-local-registry\n",
        vec![answer(&["10.0.0.10"])],
        Ok(&["10.0.0.10"]),
    );
    let report = judge(&f);
    let check = line(&report, "/etc/hosts line 1");
    assert_eq!(check.severity, Severity::Warn);
    assert!(check.text.contains("will not follow the registry"), "{report}");
    assert_eq!(report.outcome, Comparison::Same);
}

#[test]
fn registry_dns_failures_name_their_cause() {
    let base = findings("nameserver 169.254.20.25\n", "", vec![Reply::Silent], Err("x"));
    let cases = [
        (rcode(ResponseCode::NXDomain), "--record knative-local-registry=IP"),
        (rcode(ResponseCode::ServFail), "/readyz"),
        (rcode(ResponseCode::Refused), "--allow-from"),
        (rcode(ResponseCode::NoError), "endpointslices"),
        (Reply::Refused, "pass --server"),
    ];
    for (direct, fix) in cases {
        let mut f = base.clone();
        f.direct = direct;
        let report = judge(&f);
        let check = line(&report, "registry-dns at 169.254.20.25:53");
        assert_eq!(check.severity, Severity::Problem);
        assert!(check.fix.as_ref().unwrap().contains(fix), "{report}");
    }
    let mut relayed = base.clone();
    relayed.direct =
        Reply::Answer { rcode: ResponseCode::NoError, authoritative: false, addresses: addrs(&["10.0.0.10"]) };
    assert_eq!(line(&judge(&relayed), "not authoritatively").severity, Severity::Warn);
}

#[test]
fn nsswitch_without_dns_is_a_problem() {
    let mut f = findings("nameserver 169.254.20.25\n", "", vec![answer(&["10.0.0.10"])], Err("not found"));
    f.setup.nsswitch = Nsswitch::parse(Some("hosts: files myhostname\n"));
    let report = judge(&f);
    assert_eq!(line(&report, "getaddrinfo never asks DNS").severity, Severity::Problem);
    assert!(report.verdict.ends_with("apply the fix above"), "{report}");
}

#[test]
fn a_search_list_name_wins_unless_it_is_an_alias_of_the_registry() {
    let pod =
        "search team-a.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n";
    let mut f = findings(pod, "", vec![answer(&["10.0.0.10"])], Ok(&["10.96.3.3"]));
    f.search_answers = vec![
        ("knative-local-registry.team-a.svc.cluster.local".into(), answer(&["10.96.3.3"])),
        ("knative-local-registry.svc.cluster.local".into(), rcode(ResponseCode::NXDomain)),
    ];
    let report = judge(&f);
    let check = line(&report, "knative-local-registry.team-a.svc.cluster.local exists (10.96.3.3)");
    assert_eq!(check.severity, Severity::Problem);
    assert!(check.fix.as_ref().unwrap().contains("kubectl -n team-a get service knative-local-registry"), "{report}");
    assert!(!report.to_string().contains("knative-local-registry.svc.cluster.local"), "NXDOMAIN is no finding");

    f.search_answers[0].1 = answer(&["10.0.0.10"]);
    f.system.result = Ok(addrs(&["10.0.0.10"]));
    let report = judge(&f);
    assert_eq!(line(&report, "team-a.svc.cluster.local exists").severity, Severity::Warn);
    assert_eq!(report.outcome, Comparison::Same);
}
