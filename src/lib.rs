//! tributary streams events from third-party apps into a lakehouse.
//!
//! # Data flow
//!
//! ```text
//!  trigger                      log (one per pipeline)         per-sink task                    output
//!  webhook (HTTP POST) ──┐                                  ┌─ batch → route → encode ──► parquet → object store
//!    verify, dedupe      ├─► append ──► local segments ─────┼─ batch → route → encode ──► delta   → object store
//!  poll (cron + pager) ──┘   (fsync, then ack)              └─ per event ─────────────► https   → signed POST
//!                                                             each sink keeps its own progress;
//!                                                             [route]: one table per event type
//!  admin: /healthz, /readyz, /metrics, /api/… (status, replay of dead letters)
//! ```
//!
//! * The log is the source of truth: a webhook is answered 2xx only after its
//!   events are fsynced into the log; a poll page and the cursor state that
//!   says it was fetched are one fsynced append. Every record says on disk
//!   what it is ([`event::RecordKind`]) and whether its append ended with it,
//!   so recovery cuts a torn append whole and never an acknowledged one.
//! * Each sink reads the log from its own committed offset, so a slow sink never
//!   blocks another; log segments are deleted once every consumer has passed them.
//! * Sinks are idempotent on a re-flush: a Parquet object's name derives from the
//!   offset range it holds, and the range of a flush is recorded before the
//!   upload, so a re-flush after a crash rewrites the same objects. A Delta
//!   commit carries a `txn` action (app id `tributary/<pipeline>/<sink>`,
//!   version = its last offset), so the table itself says where to resume.
//!   HTTPS deliveries carry a stable `webhook-id` (at least once).
//! * Rows no write could store (a partition value too long for a path, a null
//!   merge key) and events that fit no declared column are dead letters with a
//!   reason. An inferred schema keeps every value: what fits no typed column
//!   goes to `_extra` at its JSON pointer ([`encode::infer`]).
//!
//! # Plug-in points
//! * A table sink implements [`sink::table::TableSink`] and
//!   [`sink::table::Table`] (including how it is placed on a JetStream
//!   partition and read by `sql`), with one arm in [`sink::plan`]; its config
//!   is `config/sink/<kind>.rs`, implementing [`config::SinkKind`], with one
//!   arm in each of `config/sink/mod.rs`'s `RawSink`, `SinkSpec`, `validate`
//!   and `kind` (2 src files besides the two new ones, none silent).
//! * A source is built in [`source::build`]; its config in `config/source/`
//!   implements [`config::SourceKind`] (whether one node leads it on
//!   JetStream, its dedupe window, its secrets).
//! * A log implements the contract in [`log`] (`LogStore`, `LogRead`,
//!   `LogAppend`) in a folder of its own under `log/`, with one arm in
//!   [`log::Backend::open`] and its config in `config/log.rs`; the segment
//!   log is the embedded one, `log/jetstream/` the replicated one.
//!
//! # Glossary
//! * **event** — one JSON value received by a source, with its id and arrival time.
//! * **record** — the part of an event that becomes a table row (`record_path`);
//!   also a log entry of any kind (event, poll state, dedupe ids, replay).
//! * **offset** — a record's position in its pipeline's log; a sink's *committed*
//!   offset is the first offset it has not yet made durable in storage.
//! * **dead letter** — an event that could not be stored, kept with the reason.
//! * **replay** — dead letters fed back into the log for the sink that refused
//!   them ([`replay`]); not the re-flush of a pending range after a crash.
//!
//! # Modules
//! * [`config`] — TOML and JSON Schema files → validated, fully defaulted specs;
//!   each component's file stands on `config/check.rs` alone, and
//!   `check --explain` prints the specs' own `Serialize` form.
//! * [`schema`] — JSON Schema → Arrow schema.
//! * [`event`] — the unit the log stores, its record kinds, and the envelope
//!   of a replayed dead letter that every sink unwraps.
//! * [`log`] — the log contract, the durable, append-only segment log
//!   (group commit, recovery, per-consumer progress), and in `log/jetstream/`
//!   the replicated log with its leases, poll leader and agreed schemas.
//! * [`source`] — triggers: the webhook receiver (body, dedupe, handshake) and the poll source.
//! * [`encode`] — events → Arrow record batch plus dead letters.
//! * [`sink`] — storage, batch policy, table sinks (Parquet, Delta) behind one
//!   trait and one runner, routing, the HTTPS sink, and each sink's health as
//!   the admin API shows it; below every kind, the offset-named Parquet files
//!   (`sink/files.rs`) and the dead-letter files (`sink/dead_letters.rs`).
//! * [`signature`] — webhook signatures both ways: signing the HTTPS sink's
//!   POSTs, verifying a provider's; what a shared scheme signs is written once.
//! * [`http_retry`] — the one retry policy of every outbound HTTP call.
//! * [`replay`] — dead letters back into the log.
//! * [`pipeline`] — wires each pipeline: source → log → one task per sink.
//! * [`server`] — the accept loop, TLS, webhook routes and the admin API.
//! * [`admin_client`] — the client of the admin API (`tributary status`, `replay`).
//! * [`sql`] — `tributary sql`: every table, queried with the built-in DataFusion.
//! * [`connections`] — end-user accounts of a `[connections]` pipeline:
//!   sealed credentials in a journaled store managed through the admin API,
//!   one poller per connection, templates, purge and notifications.
//! * [`telemetry`], [`shutdown`], [`error`], [`cli`] — metrics, the cancellation
//!   tree, error classes, the command line.

pub mod admin_client;
pub mod cli;
pub mod config;
pub mod connections;
pub mod encode;
pub mod error;
pub mod event;
pub mod http_retry;
pub mod log;
pub mod pipeline;
pub mod register;
pub mod replay;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod signature;
pub mod sink;
pub mod source;
pub mod sql;
pub mod telemetry;
