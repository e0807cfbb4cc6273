//! Local names are answered authoritatively, as their own zones, with dig as the client.

mod support;

use support::{RegistryDns, dig, healthy_upstream};

fn server(extra: &[&str]) -> (support::Nsd, RegistryDns) {
    let upstream = healthy_upstream();
    let up = upstream.addr.to_string();
    let mut args = vec![
        "--record",
        "knative-local-registry=10.0.0.10,10.0.0.11",
        "--record",
        "registry.example.internal=fd00::10",
        "--upstream",
        &up,
    ];
    args.extend_from_slice(extra);
    let server = RegistryDns::start(&args);
    (upstream, server)
}

#[test]
fn answers_a_records_authoritatively_with_every_address() {
    let (_up, s) = server(&[]);
    let d = dig(s.addr, &["knative-local-registry", "A"]);
    assert_eq!(d.status, "NOERROR");
    assert!(d.has_flag("aa") && d.has_flag("ra") && d.has_flag("qr"), "{:?}", d.flags);
    let mut ips = d.rdata("A");
    ips.sort();
    assert_eq!(ips, ["10.0.0.10", "10.0.0.11"]);
    assert!(d.answer.iter().all(|r| r[1] == "5"), "default TTL is 5: {:?}", d.answer);
}

#[test]
fn matches_names_case_insensitively_and_echoes_the_question_case() {
    let (_up, s) = server(&[]);
    let d = dig(s.addr, &["KnAtIvE-LoCaL-ReGiStRy", "A"]);
    assert_eq!(d.status, "NOERROR");
    assert!(d.raw.contains(";KnAtIvE-LoCaL-ReGiStRy.\t"), "question echoed as sent:\n{}", d.raw);
    assert_eq!(d.answer[0][0], "KnAtIvE-LoCaL-ReGiStRy.", "owner name echoes the case too");
}

#[test]
fn answers_aaaa_for_multi_label_names_and_honours_ttl() {
    let (_up, s) = server(&["--ttl", "30"]);
    let d = dig(s.addr, &["registry.example.internal", "AAAA"]);
    assert_eq!(d.rdata("AAAA"), ["fd00::10"]);
    assert_eq!(d.answer[0][1], "30");
}

#[test]
fn other_types_at_a_name_get_nodata_with_the_soa() {
    let (_up, s) = server(&[]);
    for (name, qtype) in
        [("knative-local-registry", "AAAA"), ("knative-local-registry", "MX"), ("registry.example.internal", "A")]
    {
        let d = dig(s.addr, &[name, qtype]);
        assert_eq!(d.status, "NOERROR", "{name} {qtype}");
        assert!(d.answer.is_empty(), "{name} {qtype}: {:?}", d.answer);
        assert!(d.has_flag("aa"));
        assert_eq!(d.authority.len(), 1, "{name} {qtype}");
        assert_eq!(d.authority[0][3], "SOA");
        assert_eq!(d.authority[0].last().unwrap(), "5", "SOA minimum is the TTL");
    }
}

#[test]
fn each_name_is_a_zone_apex_with_soa_and_ns() {
    let (_up, s) = server(&[]);
    let soa = dig(s.addr, &["knative-local-registry", "SOA"]);
    assert_eq!(soa.rdata("SOA").len(), 1);
    assert!(soa.rdata("SOA")[0].contains("hostmaster.knative-local-registry."), "{:?}", soa.answer);
    let ns = dig(s.addr, &["knative-local-registry", "NS"]);
    assert_eq!(ns.rdata("NS").len(), 1);
    assert!(ns.has_flag("aa"));
}

#[test]
fn names_below_a_local_name_are_nxdomain_with_the_soa() {
    let (_up, s) = server(&[]);
    let d = dig(s.addr, &["v2.Knative-Local-Registry", "A"]);
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.has_flag("aa"));
    assert_eq!(d.authority[0][0], "knative-local-registry.");
    assert_eq!(d.authority[0][3], "SOA");
    assert!(d.raw.contains(";v2.Knative-Local-Registry."), "question echoed:\n{}", d.raw);
}

#[test]
fn answers_carry_opt_only_when_the_query_did() {
    let (_up, s) = server(&[]);
    let with = dig(s.addr, &["knative-local-registry", "+dnssec"]);
    let edns = with.edns.expect("OPT in the answer");
    assert!(edns.contains("version: 0") && edns.contains("do"), "{edns}");
    let without = dig(s.addr, &["knative-local-registry", "+noedns"]);
    assert!(without.edns.is_none());
    assert_eq!(without.rdata("A").len(), 2);
}

#[test]
fn answers_over_tcp_too() {
    let (_up, s) = server(&[]);
    let d = dig(s.addr, &["+tcp", "knative-local-registry", "A"]);
    assert_eq!(d.rdata("A").len(), 2);
    assert!(d.raw.contains("(TCP)"));
}

#[test]
fn a_large_local_answer_truncates_over_udp_and_arrives_whole_over_tcp() {
    let upstream = healthy_upstream();
    let ips: Vec<String> = (1..=60).map(|i| format!("10.1.0.{i}")).collect();
    let record = format!("many={}", ips.join(","));
    let s = RegistryDns::start(&["--record", &record, "--upstream", &upstream.addr.to_string(), "--max-answers", "60"]);
    let udp = dig(s.addr, &["+noedns", "+ignore", "many", "A"]);
    assert!(udp.has_flag("tc"), "{:?}", udp.flags);
    assert!(udp.answer.is_empty());
    let retried = dig(s.addr, &["+noedns", "many", "A"]);
    assert_eq!(retried.rdata("A").len(), 60, "dig retries over TCP after TC");
    let edns = dig(s.addr, &["+bufsize=1232", "many", "A"]);
    assert_eq!(edns.rdata("A").len(), 60, "60 compressed A records fit 1232 bytes");
}

#[test]
fn static_records_come_from_the_environment_too() {
    let upstream = healthy_upstream();
    let mut command = std::process::Command::new(RegistryDns::BIN);
    command
        .env("REGISTRY_DNS_RECORD", "a-name=10.9.0.1 b-name=10.9.0.2")
        .env("REGISTRY_DNS_UPSTREAM", upstream.addr.to_string());
    let s = RegistryDns::start_with(command, &[]);
    assert_eq!(dig(s.addr, &["a-name"]).rdata("A"), ["10.9.0.1"]);
    assert_eq!(dig(s.addr, &["b-name"]).rdata("A"), ["10.9.0.2"]);
}

#[test]
fn many_addresses_are_capped_per_answer_and_rotate_through_all() {
    let upstream = healthy_upstream();
    let ips: Vec<String> = (1..=40).map(|i| format!("10.2.0.{i}")).collect();
    let v6: Vec<String> = (1..=20).map(|i| format!("fd00::{i:x}")).collect();
    let record = format!("many={},{}", ips.join(","), v6.join(","));
    let s = RegistryDns::start(&["--record", &record, "--upstream", &upstream.addr.to_string()]);
    let mut seen = std::collections::BTreeSet::new();
    let mut first_of_each = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let d = dig(s.addr, &["+noedns", "many", "A"]);
        assert!(!d.has_flag("tc"), "16 A records fit 512 bytes: {:?}", d.flags);
        assert_eq!(d.rdata("A").len(), 16, "capped at --max-answers (default 16)");
        first_of_each.insert(d.rdata("A")[0].clone());
        seen.extend(d.rdata("A"));
    }
    assert_eq!(seen.len(), 40, "three windows of 16 cover all 40 addresses");
    assert_eq!(first_of_each.len(), 3, "each query gets the next window");
    let aaaa = dig(s.addr, &["+noedns", "many", "AAAA"]);
    assert!(!aaaa.has_flag("tc"), "16 AAAA records fit 512 bytes too");
    assert_eq!(aaaa.rdata("AAAA").len(), 16);

    let few =
        RegistryDns::start(&["--record", "few=10.3.0.1,10.3.0.2,10.3.0.3", "--upstream", &upstream.addr.to_string()]);
    let firsts: std::collections::BTreeSet<String> =
        (0..3).map(|_| dig(few.addr, &["few", "A"]).rdata("A")[0].clone()).collect();
    assert_eq!(firsts.len(), 3, "a few addresses rotate their order");
}
