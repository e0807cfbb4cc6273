//! Whether systemd-resolved sends the name to registry-dns, and keeps the node's own upstreams,
//! judged from what resolved reports (`resolved_state`) and what its files say
//! (`resolver_setup`). Pure: the rules of resolved 252 that decide it, as docs/node-setup.md
//! explains them:
//! - a name goes to the link whose routing domain matches it best; a single-label name's one-label
//!   domain ties with every default-route server and with LLMNR, and the first success wins, so
//!   the link's server must be registry-dns and the name must not depend on anyone else;
//! - a global `DNS=` is a list, of which resolved asks the first server: one after the node's own
//!   is never asked;
//! - `FallbackDNS=` is used only while no server is known anywhere, a link's included.

use std::net::{IpAddr, SocketAddr};

use super::resolved_state::{LinkState, Reported, ResolvedState};
use super::resolver_setup::ResolvedSettings;
use super::verdict::Check;

/// The interface the DaemonSet serves on (`--interface-name`), and where node setup routes.
pub const LINK: &str = "registry-dns0";
/// node setup's drop-in, by file name.
const DROPIN: &str = "registry-dns.conf";

/// What the rules look at.
pub struct Routing<'a> {
    pub name: &'a str,
    /// registry-dns, as the doctor asks it.
    pub server: SocketAddr,
    pub settings: &'a ResolvedSettings,
    /// The drop-in directory fixes name (the first of resolved.conf's).
    pub dropin_dir: &'a str,
    pub state: &'a Reported,
}

impl Routing<'_> {
    /// One check for the route, then the LLMNR delay and the fallback servers when they matter.
    pub fn checks(&self) -> Vec<Check> {
        let state = match self.state {
            Ok(state) => state,
            Err(e) => {
                return vec![Check::warn(
                    format!("systemd-resolved did not say how it routes {}: {e}", self.name),
                    Some("run the doctor on the node, as root, where `busctl` reaches resolved".into()),
                )];
            }
        };
        let route = self.route(state);
        let mut checks = vec![self.route_check(state, route)];
        if route.is_some() && state.llmnr != "no" {
            checks.push(Check::warn(
                format!(
                    "systemd-resolved's LLMNR is {}: while registry-dns does not answer, a lookup of {} waits about 3 s for \
                     LLMNR before it fails",
                    state.llmnr, self.name
                ),
                Some(format!(
                    "add `LLMNR=no` to {}/{DROPIN} and run `systemctl restart systemd-resolved` (node setup does)",
                    self.dropin_dir
                )),
            ));
        }
        checks.extend(self.fallback(state, route.map(|(index, _)| index)));
        checks
    }

    /// The link that sends the name to registry-dns: a routing domain for it, registry-dns among
    /// its servers.
    fn route<'s>(&self, state: &'s ResolvedState) -> Option<(u32, &'s LinkState)> {
        let ip = self.server.ip();
        state
            .links
            .iter()
            .find(|(_, l)| l.servers.contains(&ip) && l.domains.iter().any(|d| d.matches(self.name)))
            .map(|(index, link)| (*index, link))
    }

    fn route_check(&self, state: &ResolvedState, route: Option<(u32, &LinkState)>) -> Check {
        let (name, ip) = (self.name, self.server.ip());
        if let Some((index, link)) = route {
            let domains = link.domains.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
            if link.default_route {
                return Check::warn(
                    format!(
                        "systemd-resolved routes {name} to {ip} on {} (ifindex {index}, {domains}), and every other name \
                         too: the link is a default route",
                        link.name
                    ),
                    Some(format!("resolvectl default-route {} no", link.name)),
                );
            }
            return Check::ok(format!(
                "systemd-resolved routes {name} to {ip} on {} (ifindex {index}, {domains}), and nothing else",
                link.name
            ));
        }
        let own = state.own_servers(None, &[]).into_iter().filter(|s| *s != ip).collect::<Vec<_>>();
        if let Some(position) = state.global_servers.iter().position(|s| *s == ip) {
            let file = self.settings.file_naming(ip).map(|f| f.display().to_string());
            let file = file.unwrap_or_else(|| "resolved.conf".into());
            let remove = format!("remove DNS={ip} (and Domains=~{name}) from {file}, then {}", self.link_fix(state));
            if position > 0 {
                return Check::problem(
                    format!(
                        "systemd-resolved asks {} (its first global DNS= server) for {name}: the global DNS={ip} of {file} \
                         comes after it and is asked only when {} fails",
                        state.global_servers[0], state.global_servers[0]
                    ),
                    remove,
                );
            }
            return Check::warn(
                format!(
                    "{ip} is a global DNS= server (from {file}): systemd-resolved sends every name of this node to it, \
                     and asks the links' servers and LLMNR for {name} too"
                ),
                Some(remove),
            );
        }
        let asked = match own.as_slice() {
            [] => "no server at all".to_string(),
            servers => format!("the node's own servers ({})", join(servers)),
        };
        Check::problem(
            format!(
                "no link routes {name} to registry-dns ({ip}): systemd-resolved sends it to {asked}, which do not know it"
            ),
            self.link_fix(state),
        )
    }

    /// How to route the name on registry-dns0, or why that cannot be done yet.
    fn link_fix(&self, state: &ResolvedState) -> String {
        let (name, ip) = (self.name, self.server.ip());
        match state.link(LINK) {
            Some(_) => format!(
                "route it on {LINK}: `resolvectl dns {LINK} {ip}; resolvectl domain {LINK} '~{name}'; resolvectl \
                 default-route {LINK} no` (deploy/node's node setup does this, and does it again whenever the link \
                 is recreated)"
            ),
            None => format!(
                "{LINK} does not exist: registry-dns creates it (--interface-name {LINK}); is registry-dns running on \
                 this node (kubectl -n registry-dns get pods -o wide)? Node setup then routes {name} on it"
            ),
        }
    }

    /// The node that has nothing but `FallbackDNS=` loses it once any link has a server.
    fn fallback(&self, state: &ResolvedState, ours: Option<u32>) -> Option<Check> {
        let promoted: Vec<IpAddr> = self
            .settings
            .dns
            .iter()
            .filter(|(file, _)| file.file_name().is_some_and(|f| f == DROPIN))
            .flat_map(|(_, servers)| servers.iter().copied())
            .collect();
        let any_server = !state.global_servers.is_empty() || state.links.values().any(|l| !l.servers.is_empty());
        if !state.own_servers(ours, &promoted).is_empty() || state.fallback_servers.is_empty() || !any_server {
            return None;
        }
        let fallback = join(&state.fallback_servers);
        if state.fallback_servers.iter().all(|s| promoted.contains(s)) {
            return Some(Check::ok(format!(
                "systemd-resolved: the node has no DNS server but its FallbackDNS= ({fallback}), named as DNS= in {}/{DROPIN} \
                 so that resolved keeps asking them",
                self.dropin_dir
            )));
        }
        Some(Check::problem(
            format!(
                "systemd-resolved has no DNS server of the node's own, only FallbackDNS= ({fallback}), which it stops \
                 using once any link has a server ({LINK} has {}): every other name this node looks up fails",
                self.server.ip()
            ),
            format!(
                "add `DNS={}` to {}/{DROPIN} and run `systemctl restart systemd-resolved` (node setup does)",
                state.fallback_servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
                self.dropin_dir
            ),
        ))
    }
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::doctor::resolved_state::Domain;
    use crate::doctor::verdict::Severity;

    const NAME: &str = "knative-local-registry";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn link(name: &str, servers: &[&str], domains: &[&str], default_route: bool) -> LinkState {
        LinkState {
            name: name.into(),
            servers: servers.iter().map(|s| ip(s)).collect(),
            domains: domains
                .iter()
                .map(|d| Domain { name: d.trim_start_matches('~').into(), route_only: d.starts_with('~') })
                .collect(),
            default_route,
            llmnr: "yes".into(),
        }
    }

    /// A node wired as node setup wires it: eth0 with its own server, registry-dns0 routing the name.
    fn wired() -> ResolvedState {
        let mut state = ResolvedState { llmnr: "no".into(), ..Default::default() };
        state.links.insert(2, link("eth0", &["10.0.0.2"], &[], true));
        state.links.insert(3, link(LINK, &["169.254.20.25"], &["~knative-local-registry"], false));
        state
    }

    fn checks(state: ResolvedState, settings: &ResolvedSettings) -> Vec<Check> {
        let reported: Reported = Ok(state);
        Routing {
            name: NAME,
            server: "169.254.20.25:53".parse().unwrap(),
            settings,
            dropin_dir: "/etc/systemd/resolved.conf.d",
            state: &reported,
        }
        .checks()
    }

    #[test]
    fn the_link_wiring_is_ok_and_nothing_else_is_said() {
        let got = checks(wired(), &ResolvedSettings::default());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].severity, Severity::Ok);
        assert!(got[0].text.contains("routes knative-local-registry to 169.254.20.25 on registry-dns0 (ifindex 3"));
    }

    #[test]
    fn the_old_global_drop_in_behind_the_nodes_own_server_is_named_with_its_file() {
        let mut state = wired();
        state.links.remove(&3);
        state.links.insert(3, link(LINK, &[], &[], false));
        state.global_servers = vec![ip("10.0.0.53"), ip("169.254.20.25")];
        state.global_domains = vec![Domain { name: NAME.into(), route_only: true }];
        let settings = ResolvedSettings {
            dns: vec![
                (PathBuf::from("/etc/systemd/resolved.conf"), vec![ip("10.0.0.53")]),
                (PathBuf::from("/etc/systemd/resolved.conf.d/registry-dns.conf"), vec![ip("169.254.20.25")]),
            ],
            ..Default::default()
        };
        let got = checks(state, &settings);
        assert_eq!(got[0].severity, Severity::Problem);
        assert!(got[0].text.contains("asks 10.0.0.53 (its first global DNS= server)"), "{}", got[0].text);
        let fix = got[0].fix.as_deref().unwrap();
        assert!(fix.starts_with("remove DNS=169.254.20.25 (and Domains=~knative-local-registry) from /etc/systemd/resolved.conf.d/registry-dns.conf"));
        assert!(fix.contains("resolvectl dns registry-dns0 169.254.20.25"), "{fix}");
        assert!(!fix.contains("create /etc"), "never advises writing a file that is there: {fix}");
    }

    #[test]
    fn no_route_names_the_servers_asked_instead_and_the_missing_link() {
        let mut state = wired();
        state.links.remove(&3);
        let got = checks(state.clone(), &ResolvedSettings::default());
        assert_eq!(got[0].severity, Severity::Problem);
        assert!(got[0].text.contains("sends it to the node's own servers (10.0.0.2)"), "{}", got[0].text);
        assert!(got[0].fix.as_deref().unwrap().starts_with("registry-dns0 does not exist"));
        state.links.insert(3, link(LINK, &[], &[], false));
        let got = checks(state, &ResolvedSettings::default());
        assert!(got[0].fix.as_deref().unwrap().starts_with("route it on registry-dns0"));
    }

    #[test]
    fn llmnr_on_and_a_default_route_on_the_link_are_warnings() {
        let mut state = wired();
        state.llmnr = "yes".into();
        state.links.get_mut(&3).unwrap().default_route = true;
        let got = checks(state, &ResolvedSettings::default());
        assert_eq!(got[0].severity, Severity::Warn);
        assert_eq!(got[0].fix.as_deref(), Some("resolvectl default-route registry-dns0 no"));
        assert_eq!(got[1].severity, Severity::Warn);
        assert!(got[1].text.contains("waits about 3 s for LLMNR"));
    }

    #[test]
    fn a_fallback_only_node_loses_its_fallback_unless_node_setup_names_it() {
        let mut state = wired();
        state.links.get_mut(&2).unwrap().servers.clear();
        state.fallback_servers = vec![ip("192.0.2.53")];
        let got = checks(state.clone(), &ResolvedSettings::default());
        assert_eq!(got[1].severity, Severity::Problem, "{got:?}");
        assert!(got[1].text.contains("only FallbackDNS= (192.0.2.53)"));
        assert_eq!(
            got[1].fix.as_deref(),
            Some(
                "add `DNS=192.0.2.53` to /etc/systemd/resolved.conf.d/registry-dns.conf and run `systemctl restart systemd-resolved` (node setup does)"
            )
        );
        state.global_servers = vec![ip("192.0.2.53")];
        let promoted = ResolvedSettings {
            dns: vec![(PathBuf::from("/etc/systemd/resolved.conf.d/registry-dns.conf"), vec![ip("192.0.2.53")])],
            ..Default::default()
        };
        let got = checks(state, &promoted);
        assert_eq!(got[1].severity, Severity::Ok, "{got:?}");
    }

    #[test]
    fn an_unreachable_resolved_is_a_warning_not_a_verdict() {
        let reported: Reported = Err("busctl: not found".into());
        let settings = ResolvedSettings::default();
        let got = Routing {
            name: NAME,
            server: "169.254.20.25:53".parse().unwrap(),
            settings: &settings,
            dropin_dir: "/etc/systemd/resolved.conf.d",
            state: &reported,
        }
        .checks();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].severity, Severity::Warn);
    }
}
