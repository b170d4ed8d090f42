//! The one integration-test binary: the real `tributary` binary, real files,
//! real HTTP, and independent Parquet readers (the `parquet` crate and DuckDB).

mod support;

// Configuration files: the shipped examples pass, broken ones explain themselves.
mod check;
// `tributary completions` and `tributary man`.
mod cluster;
mod completions;
mod connections;
// Webhook → log → Parquet: every acknowledged event exactly once, read by two readers.
mod ingest;
// kill -9 at random moments while clients post: nothing acknowledged lost or duplicated.
mod crash;
// Each bad request gets its status and a message; bad values become dead letters.
mod bad_input;
// The Parquet sink on a real S3 server (moto) on loopback.
mod s3;
// The Delta sink: exactly once locally and on S3, two writers, evolution, merge, compaction.
mod delta;
// The poll source against a fake REST API: pagination, auth, cursor, retries, kill -9.
mod poll;
// The HTTPS sink: signatures verified by libraries we did not write, faults, 410, kill -9.
mod hostile;
mod https;
mod operate;
// Inbound provider signatures: accepted, refused with a reason, only the accepted stored.
mod verify;
// Config changes across kill -9, signature floods, unwritable values, poll credentials, admin exposure.
mod hardening;
// A flaky S3 with an outage, a full data disk, a full lake disk: nothing lost, intake resumes.
mod faults;
// Published payloads of five providers, inferred, in three orders across kill -9: every value read back by four engines.
mod corpus;
// The shipped GitHub, Shopify, Stripe and Slack pipelines: signed real payloads, one table per event type, redeliveries once.
mod providers;
// `tributary sql`: the rows DuckDB and delta-rs read, in every output format; bad queries exit 1.
mod sql;
// `tributary tap`.
mod tap;
// The status page in headless Chromium: a healthy and a failing sink, as the admin API reports them.
mod page;
// The admin API without a token: Host and Origin checked (DNS rebinding, cross-site POSTs); probes and webhooks untouched.
mod admin_guard;
// What an operator meets: SIGHUP reloads the configuration; JSON log fields are plain values.
mod ops;
// A fresh machine's first start: poll credentials missing, a sink's credential unset, a bucket not made yet.
mod first_start;
// Values arrive exactly as sent: random doubles and integers, a published payload, read back by DuckDB and delta-rs.
mod numbers;
// `tributary register` against fakes of GitHub's, Stripe's and Shopify's subscription APIs.
mod register;
