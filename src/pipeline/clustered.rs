//! [`super::build`] on a JetStream log: the pipeline's streams, an appender
//! that publishes to them, and per sink the maker of its runner on one
//! partition (run where its lease is held, see [`crate::log::jetstream::leases`]);
//! a connections pipeline's connections in their bucket, and its pollers
//! (each shard run where its lease is held, see [`crate::connections::cluster`]).

use std::sync::Arc;

use super::{encoder_and_dead_letters, Built, RunError};
use crate::config::{GlobalSpec, PipelineSpec};
use crate::log;
use crate::log::jetstream::schemas::AgreedSchemas;
use crate::log::jetstream::Cluster;
use crate::server::admin::PipelineView;
use crate::shutdown::Shutdown;
use crate::sink::table::TableSink;
use crate::sink::{Placement, WrapTables};

/// Builds the pipeline on `cluster`; starts nothing.
pub(super) async fn build(
    spec: &PipelineSpec,
    global: &GlobalSpec,
    shutdown: &Shutdown,
    cluster: &Arc<Cluster>,
) -> Result<Built, RunError> {
    let dedupe_window = spec.source.kind().dedupe_window();
    let streams = cluster
        .pipeline(spec, dedupe_window)
        .await
        .map_err(|source| RunError::Cluster {
            pipeline: spec.name.clone(),
            source,
        })?;
    let appender = log::Appender::new(Arc::new(log::jetstream::JetStreamAppender(streams.clone())));
    let log = log::Log::new(Arc::new(crate::log::jetstream::leases::ClusterView(
        streams.clone(),
    )));
    let (encoder, dead_letters) = encoder_and_dead_letters(spec, global)?;
    // With an inferred schema, a table's writers agree on it in JetStream.
    let agree = spec.infer_schema.then(|| {
        let (kv, pipeline) = (cluster.progress().clone(), spec.name.clone());
        Arc::new(move |tables, sink: &str| {
            Box::new(AgreedSchemas::new(tables, kv.clone(), &pipeline, sink)) as Box<dyn TableSink>
        }) as WrapTables
    });
    let sinks = super::build_sinks(
        spec,
        (&log, &encoder, &dead_letters, shutdown),
        Placement::Partitioned { tables: agree },
    )?;
    let health = sinks.health();
    let units = sinks
        .made
        .into_iter()
        .map(|made| crate::log::jetstream::leases::SinkUnits {
            pipeline: streams.clone(),
            sink: made.sink,
            make: made.make,
            health: made.health,
        })
        .collect();
    // The poller's side copy of its state, apart from a file log's.
    let dir = global.data_dir.join(&spec.name).join("jetstream");
    std::fs::create_dir_all(&dir).map_err(|source| RunError::Buffer {
        pipeline: spec.name.clone(),
        dir: dir.display().to_string(),
        source,
    })?;
    let mut source = crate::source::build(
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
    let store = match super::sealing(spec)? {
        None => None,
        Some((keys, notifier)) => {
            let error = |source| RunError::Connections {
                pipeline: spec.name.clone(),
                source,
            };
            let unavailable = |e: crate::log::jetstream::ClusterError| {
                error(crate::connections::store::StoreError::Unavailable(
                    e.to_string(),
                ))
            };
            let kv = cluster
                .connections_bucket(&spec.name)
                .await
                .map_err(unavailable)?;
            let fields = crate::connections::Fields::of(spec);
            Some(
                crate::connections::store::Store::open_bucket(
                    kv, &spec.name, keys, fields, notifier,
                )
                .await
                .map_err(error)?,
            )
        }
    };
    if let crate::source::Source::Webhook { route, .. } = &mut source.source {
        route.connections = store.clone();
    }
    let view = PipelineView {
        name: spec.name.clone(),
        source: spec.source.kind().type_tag(),
        sinks: health,
        probes: sinks.probes,
        log,
        appender,
        dead_letters,
        max_buffer: spec.buffer_max_bytes,
        replaying: Default::default(),
        dedupe: source.dedupe.clone(),
        log_status: Some(streams.clone()),
        // The poll source runs where its lease is held, with its own poller.
        poll: None,
        connections: store.clone(),
        stop: shutdown.stop.clone(),
    };
    let connections = match (&store, &spec.source) {
        (Some(store), crate::config::SourceSpec::Poll(poll)) => {
            Some(crate::connections::cluster::Connections {
                runner: crate::connections::polling::Runner {
                    pipeline: spec.clone(),
                    spec: (**poll).clone(),
                    store: store.clone(),
                    appender: view.appender.clone(),
                    log: view.log.clone(),
                    dir: dir.clone(),
                    stop: shutdown.stop.clone(),
                    shard: None,
                },
                pipeline: streams.clone(),
            })
        }
        _ => None,
    };
    // A connections pipeline polls each connection instead of its own source.
    let poll_leader = (spec.source.kind().needs_leader() && connections.is_none()).then(|| {
        crate::log::jetstream::poll_leader::PollLeader {
            spec: spec.clone(),
            pipeline: streams.clone(),
            appender: view.appender.clone(),
            log: view.log.clone(),
            dir,
        }
    });
    Ok(Built {
        source,
        runners: Vec::new(),
        units,
        poll_leader,
        connections,
        view,
    })
}
