//! `tributary sql`: every table the configuration writes, queried with the
//! DataFusion engine the binary already links (through delta-rs), with no
//! other install. Read-only: it opens no log and takes no lock, so it works
//! while `tributary run` is running.
//!
//! Table names (lower-case; quote a name with `-` in it):
//! * `<pipeline>_<sink>` for every Parquet and Delta sink, and `<pipeline>`
//!   for the pipeline's first table sink;
//! * with `[route]`, `<pipeline>_<sink>_<table>` for every routed table
//!   found in storage, and `<pipeline>_<table>` for the first table sink's;
//! * `<pipeline>_dead_letters`, if the pipeline has any.
//!
//! Parquet sinks are hive-partitioned listing tables whose partition
//! columns read as text; Delta tables go through delta-rs's provider.

use std::io::Write;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::DataType;
use deltalake::datafusion::datasource::file_format::parquet::ParquetFormat;
use deltalake::datafusion::datasource::listing::ListingOptions;
use deltalake::datafusion::prelude::SessionContext;
use url::Url;

use crate::config::{Config, Location, SinkSpec};
use crate::sink::delta::DeltaTables;
use crate::sink::table::UNROUTED;
use crate::sink::Storage;

/// How `sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A Parquet file (needs `--output`).
    Parquet,
}

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// DataFusion refused or failed the query; its own message.
    #[error("{0}")]
    Query(#[from] deltalake::datafusion::error::DataFusionError),
    /// A table could not be opened.
    #[error("cannot open table {table} at {location}: {problem}")]
    Table {
        /// The SQL name.
        table: String,
        /// Where it is.
        location: String,
        /// What went wrong.
        #[source]
        problem: Box<OpenError>,
    },
    /// Writing the result failed.
    #[error("cannot write the result: {0}")]
    Output(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `--format parquet` of an empty result.
    #[error("cannot write the result: no rows to write")]
    NoRows,
}

/// Why a table cannot be opened for queries.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The Delta table cannot be read.
    #[error("{}", crate::error::chain(.0))]
    Delta(#[source] crate::sink::delta::DeltaError),
    /// The Parquet files' storage cannot be used.
    #[error("{}", crate::error::chain(.0))]
    Storage(#[source] crate::sink::StorageError),
    /// DataFusion cannot register the files or the table.
    #[error("{0}")]
    DataFusion(#[from] deltalake::datafusion::error::DataFusionError),
    /// delta-rs cannot give a table provider.
    #[error("{0}")]
    DeltaTable(#[from] deltalake::DeltaTableError),
    /// A local directory that cannot be resolved.
    #[error("{}: {source}", path.display())]
    Dir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A path that is no URL.
    #[error("{} is not a directory path", .0.display())]
    NotDirPath(std::path::PathBuf),
    /// An S3 location whose storage is local (Storage::new never gives one).
    #[error("an s3 location without an object store")]
    NoStore,
    /// A bucket or prefix that makes no URL.
    #[error("{0}")]
    Url(#[from] url::ParseError),
}

/// A table registered in the session, for `\d` and messages.
#[derive(Debug, Clone)]
pub struct Registered {
    /// Its SQL name.
    pub name: String,
    /// `parquet`, `delta` or `dead letters`.
    pub kind: &'static str,
    /// Where it is.
    pub location: String,
}

/// A session with every table of `config` registered.
pub async fn session(config: &Config) -> Result<(SessionContext, Vec<Registered>), SqlError> {
    let ctx = SessionContext::new();
    let mut registered = Vec::new();
    for pipeline in &config.pipelines {
        let mut first = true;
        for sink in &pipeline.sinks {
            let (kind, location, options, partition_by) = match sink {
                SinkSpec::Parquet(p) => {
                    ("parquet", &p.location, &p.storage, p.partition_by.clone())
                }
                SinkSpec::Delta(d) => ("delta", &d.location, &d.storage, Vec::new()),
                SinkSpec::Https(_) => continue,
            };
            let tables: Vec<String> = if pipeline.route.is_some() {
                // The sink itself knows which routed tables exist.
                match crate::sink::table_sink(sink, pipeline) {
                    Some(Ok(tables)) => tables.existing().await.unwrap_or_default(),
                    Some(Err(e)) => return Err(table_error(&pipeline.name, location, e)),
                    None => Vec::new(),
                }
            } else {
                vec![UNROUTED.to_string()]
            };
            for table in tables {
                let mut names = vec![sql_name(&[&pipeline.name, sink.name(), &table])];
                if first {
                    names.push(sql_name(&[&pipeline.name, &table]));
                }
                let at = if table == UNROUTED {
                    location.clone()
                } else {
                    location.join(&table)
                };
                let opened = match sink {
                    SinkSpec::Delta(d) => {
                        let tables = DeltaTables::new(&pipeline.name, d, pipeline.route.is_some());
                        delta(&ctx, &tables, &table).await
                    }
                    _ => parquet(&ctx, &at, options, &partition_by).await,
                };
                match opened {
                    Ok(Some(provider)) => {
                        for name in names {
                            ctx.register_table(name.as_str(), provider.clone())?;
                            registered.push(Registered {
                                name,
                                kind,
                                location: at.to_string(),
                            });
                        }
                    }
                    // Nothing written yet: no table to show.
                    Ok(None) => {}
                    Err(problem) => {
                        return Err(SqlError::Table {
                            table: names[0].clone(),
                            location: at.to_string(),
                            problem: Box::new(problem),
                        })
                    }
                }
            }
            first = false;
        }
        let dead = config
            .global
            .lake
            .join("_dead_letters")
            .join(&pipeline.name);
        if let Ok(Some(provider)) = parquet(&ctx, &dead, &Default::default(), &[]).await {
            let name = sql_name(&[&pipeline.name, "dead_letters"]);
            ctx.register_table(name.as_str(), provider)?;
            registered.push(Registered {
                name,
                kind: "dead letters",
                location: dead.to_string(),
            });
        }
    }
    Ok((ctx, registered))
}

fn table_error(pipeline: &str, location: &Location, e: crate::sink::StorageError) -> SqlError {
    SqlError::Table {
        table: pipeline.to_string(),
        location: location.to_string(),
        problem: Box::new(OpenError::Storage(e)),
    }
}

/// `a_b_c` from the non-empty parts.
fn sql_name(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("_")
}

type Provider = Arc<dyn deltalake::datafusion::catalog::TableProvider>;

/// The Delta table `name` of `tables`, if it exists.
async fn delta(
    ctx: &SessionContext,
    tables: &DeltaTables,
    name: &str,
) -> Result<Option<Provider>, OpenError> {
    let Some(table) = tables.read(name).await.map_err(OpenError::Delta)? else {
        return Ok(None);
    };
    table.update_datafusion_session(&ctx.state())?;
    let provider = table.table_provider().await?;
    Ok(Some(provider))
}

/// The Parquet files under `location` as one hive-partitioned table, if any.
async fn parquet(
    ctx: &SessionContext,
    location: &Location,
    options: &std::collections::BTreeMap<String, String>,
    partition_by: &[String],
) -> Result<Option<Provider>, OpenError> {
    let storage = Storage::new(location, options).map_err(OpenError::Storage)?;
    let names = storage.list().await.unwrap_or_default();
    if !names.iter().any(|n| n.ends_with(".parquet")) {
        return Ok(None);
    }
    let url = match (location, &storage) {
        (Location::Local(dir), _) => {
            let dir = dir.canonicalize().map_err(|source| OpenError::Dir {
                path: dir.clone(),
                source,
            })?;
            Url::from_directory_path(&dir).map_err(|()| OpenError::NotDirPath(dir.clone()))?
        }
        (Location::S3 { bucket, prefix }, Storage::Object { store, .. }) => {
            let root = Url::parse(&format!("s3://{bucket}/"))?;
            ctx.register_object_store(&root, store.clone());
            Url::parse(&format!("s3://{bucket}/{}/", prefix.trim_matches('/')))?
        }
        (Location::S3 { .. }, Storage::Local(_)) => return Err(OpenError::NoStore),
    };
    let listing = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partition_by
                .iter()
                .map(|c| (c.clone(), DataType::Utf8))
                .collect(),
        );
    let path = deltalake::datafusion::datasource::listing::ListingTableUrl::parse(url.as_str())?;
    let schema = listing.infer_schema(&ctx.state(), &path).await?;
    let config = deltalake::datafusion::datasource::listing::ListingTableConfig::new(path)
        .with_listing_options(listing)
        .with_schema(schema);
    let table = deltalake::datafusion::datasource::listing::ListingTable::try_new(config)?;
    Ok(Some(Arc::new(table)))
}

/// Runs `query` and returns its batches.
pub async fn query(ctx: &SessionContext, query: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let frame = ctx.sql(query).await?;
    Ok(frame.collect().await?)
}

/// Runs `query` and writes its result to `out` in `format`, flushed.
pub async fn answer(
    ctx: &SessionContext,
    query: &str,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), SqlError> {
    let batches = self::query(ctx, query).await?;
    write(&batches, format, out)?;
    out.flush().map_err(|e| SqlError::Output(e.into()))
}

/// Writes `batches` to `out` in `format`.
pub fn write(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> Result<(), SqlError> {
    fn failed(e: impl std::error::Error + Send + Sync + 'static) -> SqlError {
        SqlError::Output(Box::new(e))
    }
    match format {
        Format::Table => {
            let text =
                deltalake::arrow::util::pretty::pretty_format_batches(batches).map_err(failed)?;
            writeln!(out, "{text}").map_err(failed)?;
        }
        Format::Csv => {
            let mut writer = arrow_csv_writer(out);
            for batch in batches {
                writer.write(batch).map_err(failed)?;
            }
        }
        Format::Json => {
            let mut writer = arrow_json::ArrayWriter::new(out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs).map_err(failed)?;
            writer.finish().map_err(failed)?;
        }
        Format::Ndjson => {
            let mut writer = arrow_json::LineDelimitedWriter::new(out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs).map_err(failed)?;
            writer.finish().map_err(failed)?;
        }
        Format::Parquet => {
            let Some(first) = batches.first() else {
                return Err(SqlError::NoRows);
            };
            let mut buffer = Vec::new();
            let mut writer =
                ::parquet::arrow::ArrowWriter::try_new(&mut buffer, first.schema(), None)
                    .map_err(failed)?;
            for batch in batches {
                writer.write(batch).map_err(failed)?;
            }
            writer.close().map_err(failed)?;
            out.write_all(&buffer).map_err(failed)?;
        }
    }
    Ok(())
}

fn arrow_csv_writer(out: &mut dyn Write) -> deltalake::arrow::csv::Writer<&mut dyn Write> {
    deltalake::arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(out)
}
