//! The static source: names with fixed addresses from `--record`. Published once, at startup,
//! before the first query is read, so these names never answer SERVFAIL.

use crate::config::StaticRecord;
use crate::names::{NameState, Names};

pub async fn publish(names: &Names, records: &[StaticRecord]) -> anyhow::Result<()> {
    for record in records {
        names.publish(&record.name, NameState::Addresses(record.addresses.clone())).await?;
    }
    Ok(())
}
