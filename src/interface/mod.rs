//! The node-local interface (`--interface-name`): like NodeLocal DNSCache, registry-dns puts a
//! link-local address (default `169.254.20.25`) on a dummy interface of its own and listens
//! there, so that the node's resolver and every CoreDNS pod use the same address on every
//! cluster. Pods reach it through their node: a packet to an address of any of the node's
//! interfaces is delivered locally, without forwarding.
//!
//! Set-up runs before any socket is bound (the address must exist to be bound) and is
//! idempotent, talking netlink directly (`rtnetlink`), never shelling out to `ip`:
//!
//! - the interface is created as a dummy if it is missing, and reused if it is a dummy already
//!   (left by a previous run, or in use by the old pod of a rolling update); on a kernel built
//!   without dummy interfaces (CONFIG_DUMMY, missing from some minimal VM kernels) it is an ifb
//!   interface instead, just as inert, labelled with an alias so that it is recognised as ours;
//! - each address is added as /32 or /128 unless the interface has it already (IPv6 without
//!   duplicate address detection, so it can be bound at once);
//! - the interface is brought up.
//!
//! It is **never removed on exit**: a new instance may be starting on the same address, and the
//! left-over interface is harmless (nothing routes to it but its own addresses). To remove it by
//! hand: `ip link del registry-dns0`.
//!
//! Needs CAP_NET_ADMIN. Errors are one line each: no permission, a name taken by an interface that
//! is not a dummy, an address the kernel refuses.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, anyhow, bail};
use futures::TryStreamExt;
use rtnetlink::packet_core::ErrorMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkDummy, LinkIfb, LinkUnspec};
use tracing::{info, warn};

/// The address every node's registry-dns listens on by default: link-local, next to NodeLocal
/// DNSCache's conventional `169.254.20.10`, so both can run on one node.
pub const DEFAULT_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 25));

/// The alias (`ip link` shows it) of the interfaces registry-dns creates.
pub const ALIAS: &str = "registry-dns node-local address";

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
const MAX_NAME_LEN: usize = 15;

/// Checks an interface name as the kernel would (`dev_valid_name`), so a bad one is a config
/// error rather than a netlink error.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("interface name '{name}' must be 1 to {MAX_NAME_LEN} bytes long"));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0') {
        return Err(format!("'{name}' is not a valid interface name"));
    }
    Ok(())
}

/// Checks the addresses to put on the interface: at least one, each a unicast host address,
/// none twice.
pub fn validate_addresses(addresses: &[IpAddr]) -> Result<(), String> {
    if addresses.is_empty() {
        return Err("--interface-name needs at least one --interface-address".into());
    }
    let mut seen = HashSet::new();
    for &address in addresses {
        let unusable = address.is_unspecified()
            || address.is_multicast()
            || address == IpAddr::V4(Ipv4Addr::BROADCAST)
            || address.is_loopback();
        if unusable {
            return Err(format!("--interface-address {address} is not a unicast host address"));
        }
        if !seen.insert(address) {
            return Err(format!("--interface-address {address} is given twice"));
        }
    }
    Ok(())
}

/// The interface addresses that no listen address serves (neither the address itself nor the
/// wildcard of its family): most likely a forgotten `--listen`.
pub fn unserved(addresses: &[IpAddr], listen: &[SocketAddr]) -> Vec<IpAddr> {
    addresses
        .iter()
        .copied()
        .filter(|address| {
            !listen.iter().any(|l| l.ip() == *address || (l.ip().is_unspecified() && l.is_ipv4() == address.is_ipv4()))
        })
        .collect()
}

/// What [`ensure`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// Whether the interface had to be created (false: an existing dummy was reused).
    pub created: bool,
    /// The addresses that had to be added (the others were there already).
    pub added: Vec<IpAddr>,
}

/// Makes sure the dummy interface `name` exists, carries every one of `addresses` and is up.
/// Safe to run any number of times, and concurrently with another instance doing the same.
pub async fn ensure(name: &str, addresses: &[IpAddr]) -> anyhow::Result<Ensured> {
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open a netlink socket")?;
    let connection = tokio::spawn(connection);
    let result = ensure_with(&handle, name, addresses).await;
    drop(handle);
    connection.abort();
    let outcome = result?;
    info!(
        interface = name,
        addresses = %addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","),
        created = outcome.created,
        added = outcome.added.len(),
        "interface ready (left in place on exit; remove with `ip link del {name}`)"
    );
    Ok(outcome)
}

async fn ensure_with(handle: &Handle, name: &str, addresses: &[IpAddr]) -> anyhow::Result<Ensured> {
    let created = match find_link(handle, name).await? {
        Some(_) => false,
        None => create(handle, name).await?,
    };
    let link =
        find_link(handle, name).await?.ok_or_else(|| anyhow!("interface {name} vanished right after creation"))?;
    let index = link.header.index;
    if created {
        // The mark that tells our interface from someone else's at the next start (the kernel
        // ignores an alias given at creation).
        let alias = LinkUnspec::new_with_index(index).append_extra_attribute(LinkAttribute::IfAlias(ALIAS.into()));
        handle
            .link()
            .set(alias.build())
            .execute()
            .await
            .map_err(|e| anyhow!("cannot label interface {name}: {}", describe(&e)))?;
    } else {
        check_reusable(&link, name)?;
    }

    let existing =
        existing_addresses(handle, index).await.with_context(|| format!("cannot list the addresses of {name}"))?;
    let mut added = Vec::new();
    for &address in addresses.iter().filter(|a| !existing.contains(a)) {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        let mut request = handle.address().add(index, address, prefix);
        if address.is_ipv6() {
            // Without this the address stays tentative for a second or two and cannot be bound.
            let message = request.message_mut();
            message.header.flags |= AddressHeaderFlags::Nodad;
            message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match request.execute().await {
            Ok(()) => added.push(address),
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => bail!("cannot add {address}/{prefix} to interface {name}: {}", describe(&e)),
        }
    }

    if !link.header.flags.contains(LinkFlags::Up) {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| anyhow!("cannot bring interface {name} up: {}", describe(&e)))?;
    }
    Ok(Ensured { created, added })
}

/// Creates `name` as a dummy interface, or as an ifb one on a kernel built without the dummy
/// driver (some minimal VM kernels): both are inert devices that only hold addresses. Returns
/// false when another instance created it in the meantime.
async fn create(handle: &Handle, name: &str) -> anyhow::Result<bool> {
    let dummy = handle.link().add(LinkDummy::new(name).build()).execute().await;
    let result = match dummy {
        Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
            warn!(interface = name, "this kernel has no dummy interfaces (CONFIG_DUMMY): using an ifb interface");
            handle.link().add(LinkIfb::new(name).build()).execute().await
        }
        other => other,
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) if errno(&e) == Some(libc::EOPNOTSUPP) => {
            bail!("cannot create interface {name}: this kernel supports neither dummy nor ifb interfaces")
        }
        Err(e) => bail!("cannot create interface {name}: {}", describe(&e)),
    }
}

/// The link called `name`, if there is one.
async fn find_link(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    match handle.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => bail!("cannot look up interface {name}: {}", describe(&e)),
    }
}

async fn existing_addresses(handle: &Handle, index: u32) -> Result<Vec<IpAddr>, rtnetlink::Error> {
    let messages: Vec<AddressMessage> =
        handle.address().get().set_link_index_filter(index).execute().try_collect().await?;
    Ok(addresses_of(&messages, index))
}

/// The addresses in an address dump that belong to the link `index` (the kernel may ignore the
/// filter and dump them all).
fn addresses_of(messages: &[AddressMessage], index: u32) -> Vec<IpAddr> {
    messages
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
            // point-to-point link and the same as IFA_LOCAL otherwise.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            })
        })
        .collect()
}

/// An existing interface is reused if it is a dummy (whoever made it), or one this program
/// created (an ifb interface on a kernel without dummies). A name taken by a veth, a bridge or a
/// NIC is not ours to put addresses on.
fn check_reusable(link: &LinkMessage, name: &str) -> anyhow::Result<()> {
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        }),
        _ => None,
    });
    let ours = link.attributes.iter().any(|a| matches!(a, LinkAttribute::IfAlias(alias) if alias == ALIAS));
    match kind {
        Some(InfoKind::Dummy) => Ok(()),
        Some(InfoKind::Ifb) if ours => Ok(()),
        Some(kind) => {
            bail!("interface {name} already exists (kind {kind}), not a dummy: choose another --interface-name")
        }
        None => bail!(
            "interface {name} already exists (no kind: a physical or loopback device), not a dummy: choose another --interface-name"
        ),
    }
}

/// The errno of a netlink error answer.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(ErrorMessage { code: Some(code), .. }) => Some(-code.get()),
        _ => None,
    }
}

/// One line: the kernel's reason, with what to do about the usual one.
fn describe(error: &rtnetlink::Error) -> String {
    match errno(error) {
        Some(code @ (libc::EPERM | libc::EACCES)) => {
            format!("{} (managing an interface needs CAP_NET_ADMIN)", io::Error::from_raw_os_error(code))
        }
        Some(code) => io::Error::from_raw_os_error(code).to_string(),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests;
