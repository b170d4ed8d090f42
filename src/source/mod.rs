//! Triggers: where events come from. Today the webhook receiver; each source
//! appends to its pipeline's durable log and acknowledges only after the append.

pub mod webhook;
