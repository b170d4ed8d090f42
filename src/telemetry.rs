//! The Prometheus metrics recorder behind `/metrics`. Counters and histograms
//! are updated where things happen (webhook answers, flushes, deliveries, poll
//! runs); log and lag gauges are set when the page is scraped. Every name
//! starts with `tributary_`; labels are `pipeline`, `sink` and a class.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the latency histograms (seconds).
const SECONDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of the flush-size histogram (events).
const EVENTS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    5_000.0,
    10_000.0,
    50_000.0,
    100_000.0,
    1_000_000.0,
];

/// Installs the process-wide recorder once and returns its handle; metrics
/// recorded before this are lost, so `run` calls it before building pipelines.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), &EVENTS))
                .expect("bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder (a test harness's) may already be installed; the
            // page then stays empty rather than failing start-up.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "tributary_events_received_total",
        "Events accepted by a webhook source (fsynced)."
    );
    describe_counter!(
        "tributary_bytes_received_total",
        Unit::Bytes,
        "Body bytes of accepted webhook requests."
    );
    describe_counter!(
        "tributary_http_responses_total",
        "Answers to webhook requests, by status code."
    );
    describe_gauge!(
        "tributary_log_bytes",
        Unit::Bytes,
        "Disk the pipeline's log occupies."
    );
    describe_gauge!(
        "tributary_log_end_offset",
        "Next offset the pipeline's log assigns."
    );
    describe_gauge!(
        "tributary_log_oldest_unconsumed_age_seconds",
        Unit::Seconds,
        "Age of the oldest event some sink has not committed."
    );
    describe_gauge!(
        "tributary_sink_lag_events",
        "Log offsets a sink has not committed yet."
    );
    describe_gauge!(
        "tributary_sink_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event a sink has not committed."
    );
    describe_gauge!(
        "tributary_sink_committed_offset",
        "First offset a sink has not committed."
    );
    describe_histogram!(
        "tributary_flush_events",
        "Events per columnar flush (rows and dead letters)."
    );
    describe_histogram!(
        "tributary_flush_seconds",
        Unit::Seconds,
        "A columnar flush: conversion, upload and commit."
    );
    describe_histogram!(
        "tributary_commit_seconds",
        Unit::Seconds,
        "Upload and commit of a columnar flush."
    );
    describe_counter!(
        "tributary_sink_rows_total",
        "Rows written by a columnar sink."
    );
    describe_counter!(
        "tributary_sink_retries_total",
        "Failed columnar writes that were retried."
    );
    describe_counter!(
        "tributary_dead_letters_total",
        "Dead letters written, by reason class (schema, rejected, expired)."
    );
    describe_counter!(
        "tributary_https_deliveries_total",
        "HTTPS sink answers by class (2xx…5xx, error)."
    );
    describe_counter!("tributary_https_retries_total", "HTTPS deliveries retried.");
    describe_counter!(
        "tributary_poll_runs_total",
        "Poll runs by outcome (ok, failed, paused, stopped)."
    );
    describe_counter!("tributary_poll_pages_total", "Pages a poll source stored.");
    describe_counter!(
        "tributary_poll_records_total",
        "Records a poll source stored."
    );
}
