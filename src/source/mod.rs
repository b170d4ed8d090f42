//! Triggers: where events come from, the webhook receiver and the poll
//! source; each source appends to its pipeline's durable log and acknowledges only after the append.

pub mod poll;
pub mod webhook;
