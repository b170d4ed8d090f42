//! The Delta sink as a [`TableSink`]: its one table, or one per route
//! value, and [`DeltaSink`] as a [`Table`].

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use deltalake::{DeltaTable, DeltaTableError};
use futures::future::BoxFuture;

use super::{builder, run_on, table_error, table_runtime, DeltaError, DeltaSink};
use crate::config::spec::DeltaSinkSpec;
use crate::config::Location;
use crate::encode::Encoder;
use crate::sink::table::{
    routed_tables, Opened as TableOpened, Purged, ReadError, SqlTable, Table, TableSink, Written,
    UNROUTED,
};
use crate::sink::{SinkError, Storage};
use deltalake::datafusion::prelude::SessionContext;

/// The Delta sink: one table at its location, or (routed) one table per
/// route value at `<location>/<table>`, each with its own txn app id.
pub struct DeltaTables {
    pipeline: String,
    spec: DeltaSinkSpec,
    routed: bool,
}

impl DeltaTables {
    /// The sink of `spec` in `pipeline`; `routed` writes one table per route value.
    pub fn new(pipeline: &str, spec: &DeltaSinkSpec, routed: bool) -> Self {
        Self {
            pipeline: pipeline.to_string(),
            spec: spec.clone(),
            routed,
        }
    }

    /// The spec of table `name`: its location, and a sink name that makes
    /// its txn app id `tributary/<pipeline>/<sink>/<table>`.
    fn spec_of(&self, name: &str) -> DeltaSinkSpec {
        if name == UNROUTED {
            return self.spec.clone();
        }
        let mut spec = self.spec.clone();
        spec.location = spec.location.join(name);
        spec.name = format!("{}/{name}", spec.name);
        spec
    }

    async fn open_table(
        &self,
        name: &str,
        encoder: &Encoder,
        start: u64,
    ) -> Result<TableOpened, SinkError> {
        let spec = self.spec_of(name);
        let add_columns = spec.add_columns;
        let (table, opened) =
            DeltaSink::open(&self.pipeline, spec, encoder.table_schema(), start).await?;
        let encoder = encoder
            .clone()
            .inferring(encoder.infers() && add_columns)
            .with_record_schema(opened.record_schema);
        Ok(TableOpened {
            table: Box::new(table),
            encoder,
            resume: opened.resume,
        })
    }

    /// The table `name` as it is now, for reading (`tributary sql`); `None`
    /// if it does not exist. Creates nothing.
    pub async fn read(&self, name: &str) -> Result<Option<DeltaTable>, DeltaError> {
        let spec = self.spec_of(name);
        if let Location::Local(dir) = &spec.location {
            if !dir.join("_delta_log").is_dir() {
                return Ok(None);
            }
        }
        let (builder, url, _) = builder(&spec)?;
        let mut table = builder.build().map_err(table_error(&url))?;
        run_on(&table_runtime(), &url, async move {
            match table.load().await {
                Ok(()) => Ok(Some(table)),
                Err(DeltaTableError::NotATable(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn tables(&self) -> Result<Vec<String>, SinkError> {
        if !self.routed {
            return Ok(Vec::new());
        }
        let storage = Storage::new(&self.spec.location, &self.spec.storage)?;
        let names = storage.list().await?;
        let names: Vec<String> = names.iter().map(|n| storage.relative(n)).collect();
        Ok(routed_tables(&names, |rest| {
            rest.starts_with("_delta_log/")
        }))
    }
}

impl TableSink for DeltaTables {
    fn open<'a>(
        &'a self,
        name: &'a str,
        encoder: &'a Encoder,
        start: u64,
    ) -> BoxFuture<'a, Result<TableOpened, SinkError>> {
        Box::pin(self.open_table(name, encoder, start))
    }

    fn existing(&self) -> BoxFuture<'_, Result<Vec<String>, SinkError>> {
        Box::pin(self.tables())
    }

    fn end_offset(&self) -> BoxFuture<'_, Result<u64, SinkError>> {
        Box::pin(async move {
            let names = if self.routed {
                self.tables().await?
            } else {
                vec![UNROUTED.to_string()]
            };
            let mut end = 0;
            for name in names {
                let resume = DeltaSink::resume_offset(&self.pipeline, &self.spec_of(&name)).await?;
                end = end.max(resume.unwrap_or(0));
            }
            Ok(end)
        })
    }

    /// On partition N of a JetStream log, the txn app id is
    /// `tributary/<pipeline>/<sink>/N` (per table: `…/<sink>/N/<table>`).
    fn placed(&self, partition: Option<u32>) -> Box<dyn TableSink> {
        let mut spec = self.spec.clone();
        if let Some(partition) = partition {
            spec.name = format!("{}/{partition}", spec.name);
        }
        Box::new(DeltaTables::new(&self.pipeline, &spec, self.routed))
    }

    fn can_purge(&self) -> Result<(), String> {
        Ok(())
    }

    /// One delete commit per table, `_connection = <id>`, after counting
    /// the rows it deletes.
    fn purge<'a>(&'a self, connection: &'a str) -> BoxFuture<'a, Result<Purged, SinkError>> {
        Box::pin(async move {
            let names = if self.routed {
                self.tables().await?
            } else {
                vec![UNROUTED.to_string()]
            };
            let mut rows = 0;
            for name in names {
                let Some(table) = self.read(&name).await? else {
                    continue;
                };
                let (_, url, _) = builder(&self.spec_of(&name))?;
                let id = connection.to_string();
                rows += run_on(&table_runtime(), &url, async move {
                    use deltalake::datafusion::prelude::{col, lit};
                    let matching = || col(crate::schema::CONNECTION_COLUMN).eq(lit(id.clone()));
                    let ctx = SessionContext::new();
                    let count = ctx
                        .read_table(table.table_provider().await?)?
                        .filter(matching())?
                        .count()
                        .await?;
                    if count > 0 {
                        table.delete().with_predicate(matching()).await?;
                    }
                    Ok(count as u64)
                })
                .await?;
            }
            Ok(Purged {
                rows: Some(rows),
                files: None,
            })
        })
    }

    fn sql_table<'a>(
        &'a self,
        ctx: &'a SessionContext,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<SqlTable>, ReadError>> {
        Box::pin(async move {
            let Some(table) = self.read(name).await.map_err(ReadError::Delta)? else {
                return Ok(None);
            };
            table.update_datafusion_session(&ctx.state())?;
            Ok(Some(table.table_provider().await?))
        })
    }
}

impl Table for DeltaSink {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn partition_by(&self) -> &[String] {
        DeltaSink::partition_by(self)
    }

    fn merge_on(&self) -> Option<&[String]> {
        DeltaSink::merge_on(self)
    }

    fn write_failed(&self) -> &'static str {
        "Delta commit failed"
    }

    fn keep_schema<'a>(
        &'a mut self,
        schema: &'a SchemaRef,
    ) -> BoxFuture<'a, Result<SchemaRef, SinkError>> {
        // The commit that first uses it carries it.
        Box::pin(async { Ok(schema.clone()) })
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a RecordBatch,
        range: &'a std::ops::Range<u64>,
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        Box::pin(async move {
            self.commit(batch.clone(), range.end - 1).await?;
            Ok(Written::default())
        })
    }

    fn upkeep(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(DeltaSink::upkeep(self))
    }

    fn settle(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(DeltaSink::settle(self))
    }
}
