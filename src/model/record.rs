//! `--record NAME=IP[,IP...]`: the static name source.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::Name;

/// One local name with fixed addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRecord {
    pub name: Name,
    pub addresses: Vec<IpAddr>,
}

impl FromStr for StaticRecord {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (name, ips) = spec.split_once('=').ok_or_else(|| format!("'{spec}' is not NAME=IP[,IP...]"))?;
        let name = parse_local_name(name)?;
        let addresses = ips
            .split(',')
            .map(|ip| ip.trim().parse::<IpAddr>().map_err(|_| format!("'{ip}' is not an IP address")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { name, addresses })
    }
}

impl fmt::Display for StaticRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.addresses.iter().map(IpAddr::to_string).collect();
        write!(f, "{}={}", self.name, ips.join(","))
    }
}

/// Parses a name we are to answer for: made fully qualified, and a hostname (letters, digits,
/// hyphens) so that every resolver and image reference can carry it.
pub fn parse_local_name(text: &str) -> Result<Name, String> {
    let text = text.trim().trim_end_matches('.');
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if text.is_empty() || !text.split('.').all(valid_label) {
        return Err(format!("'{text}' is not a valid host name"));
    }
    Name::from_ascii(format!("{text}.")).map_err(|e| format!("'{text}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_several_addresses_of_both_families() {
        let r: StaticRecord = "Knative-Local-Registry=10.0.0.10,fd00::10".parse().unwrap();
        assert_eq!(r.name, Name::from_ascii("Knative-Local-Registry.").unwrap());
        assert_eq!(r.addresses.len(), 2);
        assert_eq!(r.to_string(), "Knative-Local-Registry.=10.0.0.10,fd00::10");
    }

    #[test]
    fn rejects_bad_addresses_and_names_with_a_reason() {
        assert_eq!("foo=1.2.3".parse::<StaticRecord>().unwrap_err(), "'1.2.3' is not an IP address");
        assert!("foo".parse::<StaticRecord>().unwrap_err().contains("NAME=IP"));
        assert!("bad_name=1.2.3.4".parse::<StaticRecord>().unwrap_err().contains("host name"));
        assert!("=1.2.3.4".parse::<StaticRecord>().is_err());
        assert!("a..b=1.2.3.4".parse::<StaticRecord>().is_err());
    }
}
