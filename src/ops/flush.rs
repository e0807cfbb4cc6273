//! `POST /cache/flush` empties every cache; `POST /cache/flush?name=NAME` drops that name's
//! answers (every type) from each. The answer says how many caches did it, once they all have.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;

use crate::cache::{Flusher, wire_name};

pub async fn flush(State(flusher): State<Arc<Flusher>>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let name = match query.as_deref().map(name_param) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(reason)) => return (StatusCode::BAD_REQUEST, format!("{reason}\n")),
    };
    let what = name.as_ref().map_or_else(|| "everything".to_string(), |(text, _)| text.clone());
    let caches = flusher.flush(name.map(|(_, wire)| wire)).await;
    (StatusCode::OK, format!("flushed {what} from {caches} caches\n"))
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
