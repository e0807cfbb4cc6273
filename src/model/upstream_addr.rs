//! `ADDR[:PORT]`: an upstream server's address, as `--upstream` and the doctor's `--server` take it.

use std::net::{IpAddr, SocketAddr};

/// Parses `ADDR[:PORT]`: `10.0.0.2`, `10.0.0.2:5353`, `fd00::2` or `[fd00::2]:5353`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)).map_err(|_| format!("'{text}' is not ADDR[:PORT]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_with_and_without_ports() {
        assert_eq!(parse_upstream("10.0.0.2").unwrap(), "10.0.0.2:53".parse().unwrap());
        assert_eq!(parse_upstream("10.0.0.2:5300").unwrap(), "10.0.0.2:5300".parse().unwrap());
        assert_eq!(parse_upstream("fd00::2").unwrap(), "[fd00::2]:53".parse().unwrap());
        assert_eq!(parse_upstream("[fd00::2]:5300").unwrap(), "[fd00::2]:5300".parse().unwrap());
        assert!(parse_upstream("dns.example").is_err());
    }
}
