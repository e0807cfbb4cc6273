//! The static source: names with fixed addresses from `--record`. Published at startup, before
//! the first query is read, so these names never answer SERVFAIL; a reload replaces them all in
//! one swap.

use crate::model::StaticRecord;
use crate::names::{NameState, Names};

pub async fn publish(names: &Names, records: &[StaticRecord]) -> anyhow::Result<()> {
    for record in records {
        names.publish(&record.name, NameState::Addresses(record.addresses.clone())).await?;
    }
    Ok(())
}

/// Replaces the static names `old` with `new`: names no longer configured stop being local.
pub async fn replace(names: &Names, old: &[StaticRecord], new: &[StaticRecord]) -> anyhow::Result<()> {
    let removed: Vec<_> =
        old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)).map(|o| o.name.clone()).collect();
    let set: Vec<_> = new.iter().map(|r| (r.name.clone(), NameState::Addresses(r.addresses.clone()))).collect();
    names.replace(&removed, &set).await
}
