//! [`super::build`] on a JetStream log: the pipeline's streams, an appender
//! that publishes to them, and per sink the maker of its runner on one
//! partition (run where its lease is held, see [`crate::cluster`]).

use std::sync::Arc;

use super::{encoder_and_dead_letters, Built, RunError};
use crate::buffer;
use crate::buffer::jetstream::Cluster;
use crate::config::{GlobalSpec, PipelineSpec, SinkSpec, SourceSpec};
use crate::server::admin::PipelineView;
use crate::shutdown::Shutdown;
use crate::sink::health::SinkHealth;
use crate::sink::https::HttpsRunner;
use crate::sink::task::SinkTask;
use crate::sink::Storage;

/// Builds the pipeline on `cluster`; starts nothing.
pub(super) async fn build(
    spec: &PipelineSpec,
    global: &GlobalSpec,
    shutdown: &Shutdown,
    cluster: &Arc<Cluster>,
) -> Result<Built, RunError> {
    let dedupe_window = match &spec.source {
        SourceSpec::Webhook(w) => w.dedupe.as_ref().map(|d| d.window),
        SourceSpec::Poll(_) => None,
    };
    let streams = cluster
        .pipeline(spec, dedupe_window)
        .await
        .map_err(|source| RunError::Cluster {
            pipeline: spec.name.clone(),
            source,
        })?;
    let appender = buffer::Appender::new(Arc::new(buffer::jetstream::JetStreamAppender(
        streams.clone(),
    )));
    let log = buffer::Log::new(Arc::new(crate::cluster::ClusterView(streams.clone())));
    let (encoder, dead_letters) = encoder_and_dead_letters(spec, global)?;
    // With an inferred schema, a table's writers agree on it in JetStream.
    let agree = spec.infer_schema.then(|| cluster.progress().clone());
    let mut units = Vec::new();
    let mut health = Vec::new();
    let mut probes = Vec::new();
    for sink in &spec.sinks {
        let sink_health = Arc::new(SinkHealth::default());
        health.push((sink.name().to_string(), sink_health.clone()));
        let make: crate::cluster::MakeTask = match sink {
            SinkSpec::Https(h) => {
                let signer = crate::sink::https::signer(&h.signing, &h.url).map_err(|source| {
                    RunError::Signing {
                        pipeline: spec.name.clone(),
                        sink: h.name.clone(),
                        source,
                    }
                })?;
                let (signer, pipeline, h) = (Arc::new(signer), spec.name.clone(), h.clone());
                let (dead_letters, abandon, health) = (
                    dead_letters.clone(),
                    shutdown.abandon.clone(),
                    sink_health.clone(),
                );
                Arc::new(move |log, partition| {
                    SinkTask::Https(HttpsRunner {
                        signer: signer.clone(),
                        pipeline: pipeline.clone(),
                        spec: h.clone(),
                        log,
                        dead_letters: dead_letters.clone(),
                        abandon: abandon.clone(),
                        health: health.clone(),
                        partition: Some(partition),
                    })
                })
            }
            SinkSpec::Delta(d) => {
                if let Some(location) = sink.location() {
                    let storage =
                        Storage::new(location, sink.storage_options()).map_err(|source| {
                            RunError::Storage {
                                pipeline: spec.name.clone(),
                                sink: d.name.clone(),
                                source: Box::new(source),
                            }
                        })?;
                    probes.push((d.name.clone(), storage));
                }
                let template = super::table_runner(
                    spec,
                    (&log, &encoder, &dead_letters, shutdown),
                    &d.name,
                    Box::new(crate::sink::delta::DeltaTables::new(
                        &spec.name,
                        d,
                        spec.route.is_some(),
                    )),
                    sink_health.clone(),
                );
                let template = Arc::new(template);
                let d = d.clone();
                let agree = agree.clone();
                Arc::new(move |log, partition| {
                    // The txn app id of a partition: tributary/<pipeline>/<sink>/<partition>.
                    let mut own = d.clone();
                    own.name = format!("{}/{partition}", d.name);
                    let tables = crate::sink::delta::DeltaTables::new(
                        &template.pipeline,
                        &own,
                        template.route.is_some(),
                    );
                    let tables = agreed(Box::new(tables), &agree, &template.pipeline, &d.name);
                    SinkTask::Columnar(template.on_partition(log, partition, tables))
                })
            }
            SinkSpec::Parquet(p) => {
                let tables = crate::sink::parquet::ParquetSink::new(p, spec.route.is_some())
                    .map_err(|source| RunError::Storage {
                        pipeline: spec.name.clone(),
                        sink: p.name.clone(),
                        source: Box::new(source),
                    })?;
                probes.push((p.name.clone(), tables.storage().clone()));
                let template = Arc::new(super::table_runner(
                    spec,
                    (&log, &encoder, &dead_letters, shutdown),
                    &p.name,
                    Box::new(tables.clone()),
                    sink_health.clone(),
                ));
                let agree = agree.clone();
                Arc::new(move |log, partition| {
                    // Files named by partition: offsets repeat across partitions.
                    let tables = Box::new(tables.clone().in_partition(partition));
                    let tables = agreed(tables, &agree, &template.pipeline, &template.sink);
                    SinkTask::Columnar(template.on_partition(log, partition, tables))
                })
            }
        };
        units.push(crate::cluster::SinkUnits {
            pipeline: streams.clone(),
            sink: sink.name().to_string(),
            make,
            health: sink_health,
        });
    }
    // The poller's side copy of its state, apart from a file log's.
    let dir = global.data_dir.join(&spec.name).join("jetstream");
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Buffer {
        pipeline: spec.name.clone(),
        dir: dir.display().to_string(),
        source,
    })?;
    let source = crate::source::build(
        spec,
        global,
        &dir,
        appender.clone(),
        &log,
        shutdown.stop.clone(),
    )
    .await
    .map_err(|source| RunError::Source {
        pipeline: spec.name.clone(),
        source,
    })?;
    let view = PipelineView {
        name: spec.name.clone(),
        source: crate::source::kind(&spec.source),
        sinks: health,
        probes,
        log,
        appender,
        dead_letters,
        max_buffer: spec.buffer_max_bytes,
        replaying: Default::default(),
        dedupe: source.dedupe.clone(),
        cluster: Some(streams.clone()),
        // The poll source runs where its lease is held, with its own poller.
        poll: None,
    };
    let poll_leader =
        matches!(spec.source, SourceSpec::Poll(_)).then(|| crate::cluster::poll::PollLeader {
            spec: spec.clone(),
            pipeline: streams.clone(),
            appender: view.appender.clone(),
            log: view.log.clone(),
            dir,
        });
    Ok(Built {
        source,
        runners: Vec::new(),
        units,
        poll_leader,
        view,
    })
}

/// `tables`, agreeing on inferred schemas through `kv` when there is one.
fn agreed(
    tables: Box<dyn crate::sink::table::TableSink>,
    kv: &Option<async_nats::jetstream::kv::Store>,
    pipeline: &str,
    sink: &str,
) -> Box<dyn crate::sink::table::TableSink> {
    match kv {
        Some(kv) => Box::new(crate::cluster::schema::AgreedSchemas::new(
            tables,
            kv.clone(),
            pipeline,
            sink,
        )),
        None => tables,
    }
}
