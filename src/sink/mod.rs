//! Sinks: where a pipeline's events end up. A runner per sink reads the
//! pipeline's log from the sink's own committed offset, gathers a batch
//! ([`batch`]), encodes it, writes it to its tables ([`table`]: Parquet
//! files, [`delta`] tables) and only then commits the offset. A Delta table
//! is its own progress record. The HTTPS sink ([`https`]) posts each event.
//!
//! [`plan`] is the one place that maps a sink kind to its code: a table sink
//! answers with its [`table::TableSink`], which [`build`] turns into a runner
//! the same way for every kind, on the file log or on a JetStream partition
//! ([`Placement`]); the HTTPS sink builds its own. Every question about a
//! sink that needs only its config (name, location, secrets, type tag) is a
//! method of [`crate::config::SinkKind`]. Adding a table sink is a spec in
//! `config/sink/`, a [`table::TableSink`] here, and one arm in [`plan`].

pub mod batch;
pub mod dead_letters;
pub mod delta;
mod error;
pub mod files;
pub mod health;
pub mod https;
pub mod parquet;
pub mod partition;
pub mod runner;
pub mod storage;
pub mod table;
pub mod task;

use std::sync::Arc;

use crate::config::spec::HttpsSinkSpec;
use crate::config::{PipelineSpec, SinkSpec};
use crate::encode::Encoder;
use crate::log::Log;
use crate::sink::health::SinkHealth;
use crate::sink::task::SinkTask;

pub use error::SinkError;
pub use storage::{Storage, StorageError};

/// What a sink kind is made of: tables a [`runner::Runner`] writes, or the
/// HTTPS sink's deliveries.
pub enum Plan<'a> {
    /// A table sink.
    Tables(Box<dyn table::TableSink>),
    /// The HTTPS sink.
    Https(&'a HttpsSinkSpec),
}

/// The one `match` over sink kinds.
pub fn plan<'a>(spec: &'a SinkSpec, pipeline: &PipelineSpec) -> Result<Plan<'a>, StorageError> {
    let routed = pipeline.route.is_some();
    Ok(match spec {
        SinkSpec::Parquet(p) => Plan::Tables(Box::new(parquet::ParquetSink::new(p, routed)?)),
        SinkSpec::Delta(d) => {
            Plan::Tables(Box::new(delta::DeltaTables::new(&pipeline.name, d, routed)))
        }
        SinkSpec::Https(h) => Plan::Https(h),
    })
}

/// The table sink a sink spec describes; `None` for a sink that writes no
/// tables (HTTPS).
pub fn table_sink(
    spec: &SinkSpec,
    pipeline: &PipelineSpec,
) -> Option<Result<Box<dyn table::TableSink>, StorageError>> {
    match plan(spec, pipeline) {
        Ok(Plan::Tables(tables)) => Some(Ok(tables)),
        Ok(Plan::Https(_)) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Where a sink's runners read: the file log (one runner), or the
/// partitions of a JetStream log (one runner per partition, where its lease
/// is held).
#[derive(Clone)]
pub enum Placement {
    /// The file log.
    Local,
    /// A JetStream log. `tables` wraps each partition's table sink where the
    /// backend needs to (with an inferred schema, a table's writers agree on
    /// it through the log).
    Partitioned {
        /// Wraps a partition's table sink (given the sink's name).
        tables: Option<WrapTables>,
    },
}

/// Wraps a table sink for its place on a log backend: `(tables, sink name)`.
pub type WrapTables =
    Arc<dyn Fn(Box<dyn table::TableSink>, &str) -> Box<dyn table::TableSink> + Send + Sync>;

/// What building a sink needs of its pipeline.
pub struct SinkContext<'a> {
    /// The pipeline.
    pub pipeline: &'a PipelineSpec,
    /// Its log (on JetStream: the pipeline's view; each runner gets its partition's).
    pub log: &'a Log,
    /// Its encoder.
    pub encoder: &'a Arc<Encoder>,
    /// Its dead letters' storage.
    pub dead_letters: &'a Storage,
    /// Cancelled when shutdown's grace period ends.
    pub abandon: &'a tokio_util::sync::CancellationToken,
    /// The sink's health, shared by its runners.
    pub health: Arc<SinkHealth>,
    /// Where its runners read.
    pub placement: Placement,
}

/// Makes a sink's runner on the log it is given: the file log (`None`) or
/// a JetStream partition.
pub type MakeTask = Arc<dyn Fn(Log, Option<u32>) -> SinkTask + Send + Sync>;

/// A sink ready to run.
pub struct BuiltSink {
    /// Makes its runner(s).
    pub make: MakeTask,
    /// The storage the admin API probes, for sinks that write to storage.
    pub probe: Option<Storage>,
}

/// Builds `spec`'s sink; starts nothing.
pub fn build(spec: &SinkSpec, ctx: &SinkContext<'_>) -> Result<BuiltSink, SinkError> {
    let probe = match spec.kind().location() {
        Some(location) => Some(Storage::new(location, spec.kind().storage_options())?),
        None => None,
    };
    let make = match plan(spec, ctx.pipeline)? {
        Plan::Https(h) => task::https(h, ctx)?,
        Plan::Tables(tables) => runner::make(spec.kind().name(), tables, ctx),
    };
    Ok(BuiltSink { make, probe })
}

/// Lowers the calling blocking-pool thread's scheduling priority (nice +10)
/// before CPU-heavy conversion. Acknowledging webhooks is the latency users
/// see, so it wins the CPU; conversion takes what is left, and the durable
/// buffer absorbs the difference (a full buffer answers 503). Linux applies
/// `setpriority(PRIO_PROCESS, 0, …)` to the calling thread only.
pub(crate) fn background_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: setpriority takes no pointers; it only changes this thread's nice value.
            #[cfg(target_os = "linux")]
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            }
        }
    });
}
