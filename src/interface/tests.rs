use std::num::NonZeroI32;

use rtnetlink::packet_route::address::AddressMessage;

use super::*;

#[test]
fn interface_names_follow_the_kernel_rules() {
    assert!(validate_name("registry-dns0").is_ok());
    assert!(validate_name("a").is_ok());
    assert!(validate_name("fifteen-chars-x").is_ok());
    assert!(validate_name("sixteen-chars-xx").unwrap_err().contains("1 to 15 bytes"));
    assert!(validate_name("").is_err());
    for bad in [".", "..", "a/b", "a:b", "a b", "a\tb"] {
        assert!(validate_name(bad).unwrap_err().contains("not a valid interface name"), "{bad:?}");
    }
}

#[test]
fn addresses_must_be_unicast_hosts_given_once() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(validate_addresses(&[DEFAULT_ADDRESS]).is_ok());
    assert!(validate_addresses(&[DEFAULT_ADDRESS, ip("fd00::53")]).is_ok());
    assert!(validate_addresses(&[]).unwrap_err().contains("at least one"));
    for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "127.0.0.53", "::1"] {
        assert!(validate_addresses(&[ip(bad)]).unwrap_err().contains("not a unicast host address"), "{bad}");
    }
    assert!(validate_addresses(&[DEFAULT_ADDRESS, DEFAULT_ADDRESS]).unwrap_err().contains("twice"));
}

#[test]
fn an_address_is_served_by_itself_or_its_family_wildcard() {
    let v6: IpAddr = "fd00::53".parse().unwrap();
    let sock = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert!(unserved(&[DEFAULT_ADDRESS], &[sock("169.254.20.25:53")]).is_empty());
    assert!(unserved(&[DEFAULT_ADDRESS], &[sock("0.0.0.0:53")]).is_empty());
    assert_eq!(unserved(&[DEFAULT_ADDRESS], &[sock("[::]:53")]), [DEFAULT_ADDRESS]);
    assert_eq!(unserved(&[DEFAULT_ADDRESS, v6], &[sock("127.0.0.1:5353"), sock("[::]:53")]), [DEFAULT_ADDRESS]);
}

fn link_of_kind(kind: Option<InfoKind>, alias: Option<&str>) -> LinkMessage {
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName("x".into()));
    if let Some(alias) = alias {
        link.attributes.push(LinkAttribute::IfAlias(alias.into()));
    }
    if let Some(kind) = kind {
        link.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]));
    }
    link
}

#[test]
fn only_a_dummy_or_our_own_ifb_interface_is_reused() {
    assert!(check_reusable(&link_of_kind(Some(InfoKind::Dummy), None), "x").is_ok());
    assert!(check_reusable(&link_of_kind(Some(InfoKind::Ifb), Some(ALIAS)), "x").is_ok());
    let ifb = check_reusable(&link_of_kind(Some(InfoKind::Ifb), None), "x").unwrap_err().to_string();
    assert!(ifb.contains("already exists (kind ifb), not a dummy"), "someone else's ifb: {ifb}");
    let veth = check_reusable(&link_of_kind(Some(InfoKind::Veth), Some(ALIAS)), "x").unwrap_err().to_string();
    assert!(veth.contains("already exists (kind veth), not a dummy"), "{veth}");
    let plain = check_reusable(&link_of_kind(None, None), "x").unwrap_err().to_string();
    assert!(plain.contains("not a dummy"), "{plain}");
    assert!(!plain.contains('\n'));
}

#[test]
fn existing_addresses_are_the_links_local_ones() {
    let message = |index: u32, attributes: Vec<AddressAttribute>| {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.attributes = attributes;
        m
    };
    let peer: IpAddr = "10.0.0.2".parse().unwrap();
    let v6: IpAddr = "fd00::53".parse().unwrap();
    let dump = [
        message(7, vec![AddressAttribute::Address(peer), AddressAttribute::Local(DEFAULT_ADDRESS)]),
        message(7, vec![AddressAttribute::Address(v6)]),
        message(8, vec![AddressAttribute::Local("10.9.9.9".parse().unwrap())]),
    ];
    assert_eq!(addresses_of(&dump, 7), [DEFAULT_ADDRESS, v6]);
}

#[test]
fn netlink_errors_are_one_line_with_the_usual_remedy() {
    let error = |errno: i32| {
        let mut message = ErrorMessage::default();
        message.code = NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(message)
    };
    assert_eq!(errno(&error(libc::EEXIST)), Some(libc::EEXIST));
    assert!(describe(&error(libc::EPERM)).contains("needs CAP_NET_ADMIN"), "{}", describe(&error(libc::EPERM)));
    assert!(!describe(&error(libc::EEXIST)).contains("CAP_NET_ADMIN"));
    assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
}

/// The real netlink calls, in a network namespace of this thread's own (root only; skipped
/// otherwise): create, reuse, a second address, and the refusal of a non-dummy name.
#[test]
fn ensure_creates_then_reuses_the_interface_in_a_private_namespace() {
    let result = std::thread::spawn(|| {
        // SAFETY: unshare only changes this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipped: unshare(CLONE_NEWNET) needs root: {}", io::Error::last_os_error());
            return;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let v6: IpAddr = "fd00::53".parse().unwrap();
            let first = ensure("registry-dns0", &[DEFAULT_ADDRESS]).await.unwrap();
            assert_eq!(first, Ensured { created: true, added: vec![DEFAULT_ADDRESS] });
            // Bound at once, as the server does right after.
            std::net::UdpSocket::bind((DEFAULT_ADDRESS, 0)).unwrap();

            let again = ensure("registry-dns0", &[DEFAULT_ADDRESS]).await.unwrap();
            assert_eq!(again, Ensured { created: false, added: vec![] }, "idempotent");

            let dual = ensure("registry-dns0", &[DEFAULT_ADDRESS, v6]).await.unwrap();
            assert_eq!(dual, Ensured { created: false, added: vec![v6] });
            std::net::UdpSocket::bind((v6, 0)).expect("IPv6 bindable at once (no DAD)");

            let lo = ensure("lo", &[DEFAULT_ADDRESS]).await.unwrap_err().to_string();
            assert!(lo.contains("interface lo already exists (no kind"), "{lo}");
        });
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
