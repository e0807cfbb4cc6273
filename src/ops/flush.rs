//! `POST /cache/flush` empties the cache; `POST /cache/flush?name=NAME` drops that name's answers
//! (every type). The answer says how many answers went; the next query after it already misses.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;

use crate::cache::wire_name;
use crate::forward::Forwarder;

pub async fn flush(State(forwarder): State<Arc<Forwarder>>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let name = match query.as_deref().map(name_param) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(reason)) => return (StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    let what = name.as_ref().map_or_else(|| "everything".to_string(), |(text, _)| text.clone());
    let answers = forwarder.flush(name.as_ref().map(|(_, wire)| wire.as_slice()));
    (StatusCode::OK, format!("flushed {what}: {answers} answers\n"))
}

/// The `name` parameter: as given, and in lower-cased wire form.
fn name_param(query: &str) -> Result<(String, Vec<u8>), String> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .ok_or_else(|| format!("unknown parameters '{query}': only name=NAME"))?;
    let wire = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'%'))
        .then(|| wire_name(value))
        .flatten()
        .ok_or_else(|| format!("'{value}' is not a domain name"))?;
    Ok((value.to_string(), wire))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_name_and_refuses_anything_else() {
        assert_eq!(name_param("name=Example.ORG").unwrap().1, b"\x07example\x03org\x00");
        assert_eq!(name_param("name=knative-local-registry.").unwrap().0, "knative-local-registry.");
        assert!(name_param("nme=x").is_err());
        assert!(name_param("name=").is_err());
        assert!(name_param("name=a%20b").is_err());
        assert!(name_param(&format!("name={}", "a".repeat(64))).is_err());
    }
}
