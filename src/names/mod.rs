//! Local names: the table the hot path answers from, and the zones behind each name.

mod table;
mod zone;

pub use table::{Entry, Lookup, NameState, NameTable, Names};
pub use zone::{Answers, EMPTY_NAME_NEGATIVE_TTL, ZoneSettings};
