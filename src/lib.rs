//! tributary streams events from third-party apps into a lakehouse.
//!
//! # Data flow
//!
//! ```text
//!  trigger                 durable buffer              per-sink runner                sink
//!  webhook (HTTP POST) ──► append(events) ──► log ──┬─ batcher → Arrow encoder ──► parquet → object store
//!                          (fsync, then ack)        ├─ batcher → Arrow encoder ──► delta   → object store
//!                                                   └─ (one runner per sink, each with its own offset)
//! ```
//!
//! * The buffer is the source of truth: a webhook is answered 2xx only after its
//!   events are fsynced into the log.
//! * Each sink reads the log from its own committed offset, so a slow sink never
//!   blocks another; log segments are deleted once every sink has passed them.
//! * Sinks are idempotent on replay: a Parquet object's name derives from the
//!   offset range it holds, and the range of a flush is recorded before the
//!   upload, so a replay after a crash rewrites the same objects. A Delta
//!   commit carries a `txn` action (app id `tributary/<pipeline>/<sink>`,
//!   version = its last offset), so the table itself says where to resume.
//!
//! # Glossary
//! * **event** — one JSON value received by a source, with its id and arrival time.
//! * **record** — the part of an event that becomes a table row (`record_path`).
//! * **offset** — an event's position in its pipeline's log; a sink's *committed*
//!   offset is the first offset it has not yet made durable in storage.
//! * **dead letter** — an event that could not be converted, kept with the reason.
//!
//! # Modules
//! * [`config`] — TOML and JSON Schema files → validated, fully defaulted specs.
//! * [`schema`] — JSON Schema → Arrow schema.
//! * [`event`] — the unit the buffer stores.
//! * [`buffer`] — the durable, append-only log with group commit and a per-sink ledger.
//! * [`source`] — triggers; today the webhook receiver.
//! * [`encode`] — events → Arrow record batch plus dead letters.
//! * [`sink`] — storage, batch policy, the per-sink runner, the Parquet writer and the Delta sink.
//! * [`pipeline`] — wires one pipeline: source → buffer → one runner per sink.
//! * [`server`] — the HTTP server: webhook routes and `/healthz`.
//! * [`shutdown`] — cancellation tree, task tracker and grace deadline.

pub mod buffer;
pub mod cli;
pub mod config;
pub mod control;
pub mod encode;
pub mod error;
pub mod event;
pub mod http_retry;
pub mod pipeline;
pub mod replay;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod status;
pub mod telemetry;
