//! `tributary sql`: every table the configuration writes, queried with the
//! DataFusion engine the binary already links (through delta-rs), with no
//! other install. Read-only: it opens no log and takes no lock, so it works
//! while `tributary run` is running, and it runs only statements that read
//! (`SELECT`, `WITH`, `VALUES`, `EXPLAIN`, `SHOW`, `DESCRIBE`): DDL, DML and
//! `COPY … TO` are refused before they run.
//!
//! Table names (lower-case; quote a name with `-` in it):
//! * `<pipeline>_<sink>` for every Parquet and Delta sink, and `<pipeline>`
//!   for the pipeline's first table sink;
//! * with `[route]`, `<pipeline>_<sink>_<table>` for every routed table
//!   found in storage, and `<pipeline>_<table>` for the first table sink's;
//! * `<pipeline>_dead_letters`, empty until the pipeline has a dead letter.
//!
//! Parquet sinks are hive-partitioned listing tables whose partition
//! columns read as text; Delta tables go through delta-rs's provider.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use arrow_array::RecordBatch;
use deltalake::datafusion::datasource::empty::EmptyTable;
use deltalake::datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use deltalake::datafusion::sql::sqlparser::dialect::GenericDialect;
use deltalake::datafusion::sql::sqlparser::tokenizer::{
    Location as TextLocation, Token, TokenWithSpan, Tokenizer,
};

use crate::config::{Config, Location};
use crate::sink::table::UNROUTED;

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
    /// The statement would write a file or a table, or change the session.
    #[error("tributary sql only reads ({0}): run SELECT, WITH, VALUES, EXPLAIN, SHOW or DESCRIBE; to save a result, add --format and --output FILE")]
    NotARead(deltalake::datafusion::error::DataFusionError),
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
pub use crate::sink::table::ReadError as OpenError;

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

/// A session with every table of `config` registered (and
/// `information_schema`, for `SHOW TABLES` and `SHOW COLUMNS`).
pub async fn session(config: &Config) -> Result<(SessionContext, Vec<Registered>), SqlError> {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    let mut registered = Vec::new();
    for pipeline in &config.pipelines {
        let mut first = true;
        for sink in &pipeline.sinks {
            let (Some(location), kind) = (sink.location(), sink.kind().type_tag()) else {
                continue;
            };
            let sink_tables = match crate::sink::table_sink(sink, pipeline) {
                Some(Ok(tables)) => tables,
                Some(Err(e)) => return Err(table_error(&pipeline.name, location, e)),
                None => continue,
            };
            let tables: Vec<String> = if pipeline.route.is_some() {
                // The sink itself knows which routed tables exist.
                sink_tables.existing().await.unwrap_or_default()
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
                match sink_tables.sql_table(&ctx, &table).await {
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
        let name = sql_name(&[&pipeline.name, "dead_letters"]);
        let provider =
            match crate::sink::parquet::listing(&ctx, &dead, &Default::default(), &[]).await {
                Ok(Some(provider)) => provider,
                // No dead letter yet: the documented name answers, with no rows.
                Ok(None) => Arc::new(EmptyTable::new(crate::encode::dead_letter::schema())) as _,
                Err(problem) => {
                    return Err(SqlError::Table {
                        table: name,
                        location: dead.to_string(),
                        problem: Box::new(problem),
                    })
                }
            };
        ctx.register_table(name.as_str(), provider)?;
        registered.push(Registered {
            name,
            kind: "dead letters",
            location: dead.to_string(),
        });
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

/// What a query may do: read. No DDL (`CREATE …`, `DROP …`), no DML
/// (`INSERT`, `COPY … TO`, which write tables and files), no statements that
/// change the session (`SET`, transactions).
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs `query` (one statement that reads) and returns its batches.
pub async fn query(ctx: &SessionContext, query: &str) -> Result<Vec<RecordBatch>, SqlError> {
    // `SessionContext::sql_with_options` in two steps, so a refusal is told
    // apart from a query that fails.
    let plan = ctx.state().create_logical_plan(query).await?;
    read_only().verify_plan(&plan).map_err(SqlError::NotARead)?;
    let frame = ctx.execute_logical_plan(plan).await?;
    Ok(frame.collect().await?)
}

/// Splits `text` after each `;` that ends a statement: one the SQL tokenizer
/// reads as a token of its own, not one inside a string, a quoted name or a
/// comment. Returns the statements so ended (trimmed; those holding only
/// blanks and comments left out) and the unfinished rest, empty when it holds
/// only blanks and comments. Text that stops inside a string or a comment is
/// unfinished from there on: more lines may close it.
pub fn split(text: &str) -> (Vec<String>, &str) {
    let dialect = GenericDialect {};
    let mut tokens = Vec::new();
    // On an error, `tokens` holds every token before it.
    let unfinished = Tokenizer::new(&dialect, text)
        .tokenize_with_location_into_buf(&mut tokens)
        .is_err();
    let mut ends = semicolon_offsets(text, &tokens).into_iter();
    let mut statements = Vec::new();
    let (mut start, mut meaningful) = (0, false);
    for token in &tokens {
        match token.token {
            Token::SemiColon => {
                // One entry per `;` token, in order; `None` (a location
                // that is not at a `;`) leaves it inside the statement.
                let Some(end) = ends.next().flatten() else {
                    meaningful = true;
                    continue;
                };
                if meaningful {
                    statements.push(text[start..end].trim().to_string());
                }
                (start, meaningful) = (end + 1, false);
            }
            Token::Whitespace(_) | Token::EOF => {}
            _ => meaningful = true,
        }
    }
    let rest = if meaningful || unfinished {
        &text[start..]
    } else {
        ""
    };
    (statements, rest)
}

/// The byte offset in `text` of each `;` token among `tokens`, in order. The
/// tokenizer locates a token by line and column, both from 1, counting
/// columns in characters; a location that is not at a `;` gives `None`.
fn semicolon_offsets(text: &str, tokens: &[TokenWithSpan]) -> Vec<Option<usize>> {
    let mut semicolons = HashMap::new();
    let mut at = TextLocation::new(1, 1);
    for (offset, c) in text.char_indices() {
        if c == ';' {
            semicolons.insert(at, offset);
        }
        at = if c == '\n' {
            TextLocation::new(at.line + 1, 1)
        } else {
            TextLocation::new(at.line, at.column + 1)
        };
    }
    tokens
        .iter()
        .filter(|t| t.token == Token::SemiColon)
        .map(|t| semicolons.get(&t.span.start).copied())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_end_at_semicolons_the_tokenizer_reads_not_at_those_in_strings() {
        let (done, rest) = split("select ';' as a; select 2;");
        assert_eq!(done, ["select ';' as a", "select 2"]);
        assert_eq!(rest, "");
        // The last statement without its `;` is the unfinished rest.
        let (done, rest) = split("select ';' as a; select 2");
        assert_eq!(done, ["select ';' as a"]);
        assert_eq!(rest.trim(), "select 2");
        // In a quoted name and a comment, over lines, after characters of two bytes.
        let text = "select 'é;' as \"x;y\" -- a; b\n  from t;\nselect 3;";
        assert_eq!(
            split(text).0,
            ["select 'é;' as \"x;y\" -- a; b\n  from t", "select 3"]
        );
        // A string still open waits for the next line, `;` and all.
        let (done, rest) = split("select 1; select 'a;\n");
        assert_eq!(done, ["select 1"]);
        assert_eq!(rest, " select 'a;\n");
        let (done, _) = split("select 1; select 'a;\nb';\n");
        assert_eq!(done, ["select 1", "select 'a;\nb'"]);
        // Empty statements and a trailing comment are nothing to run.
        let (done, rest) = split(";; select 1; -- done\n");
        assert_eq!(done, ["select 1"]);
        assert_eq!(rest, "");
    }

    #[tokio::test]
    async fn only_statements_that_read_run() {
        let ctx =
            SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.parquet");
        let refused = [
            format!("COPY (SELECT 1 AS a) TO '{}'", file.display()),
            "CREATE TABLE t AS SELECT 1 AS a".to_string(),
            "CREATE VIEW v AS SELECT 1 AS a".to_string(),
            "SET datafusion.execution.batch_size = 1".to_string(),
        ];
        for statement in &refused {
            let e = query(&ctx, statement).await.unwrap_err();
            assert!(matches!(e, SqlError::NotARead(_)), "{statement}: {e}");
            assert!(e.to_string().contains("only reads"), "{e}");
        }
        assert!(!file.exists(), "COPY wrote nothing");
        assert!(!ctx.table_exist("t").unwrap(), "no table was created");
        for read in [
            "SELECT 1 AS a",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
        ] {
            query(&ctx, read)
                .await
                .unwrap_or_else(|e| panic!("{read}: {e}"));
        }
    }
}
