//! Output files: Parquet, CSV and JSONL, written while streaming and replaced atomically.
//!
//! This module owns turning finished tickets into rows (resolving each output column from its
//! sources), the three file formats, and replacing the previous files only when the new ones are
//! complete (write to a temporary file in the output folder, then rename), so a reader never sees a
//! half-written file. It does not decide what a ticket contains (`engine`). The invariants: rows are
//! written in the order received, which the engine guarantees is ticket order; the same rows give
//! byte-identical files; and memory is bounded by one Parquet row group, not by the number of rows.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::cache::ArtifactSummary;
use crate::config::{Config, Format, Source};
use crate::graph::Graph;
use crate::key::ArtifactKey;
use crate::sampling::{TicketSample, ValueKind, Zone};
use crate::value::{NodeOutput, OutputKind};

/// Rows per Parquet row group.
const ROW_GROUP: usize = 4096;
/// Rows kept as cells before they are converted to Arrow arrays and handed to the Parquet writer,
/// which encodes them into the open row group at once. A quarter of a row group: the cells, their
/// arrays and the encoded row group are not all a whole row group's size at the same moment (which
/// made a 35 MB spike at every row group). The file is the same: the writer cuts pages every
/// 1,024 rows whatever the size of the batches it is given.
const BATCH_ROWS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot create the output folder `{path}`: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("cannot write `{path}`: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// One ticket that could not be completed.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub(crate) struct Failure {
    pub(crate) ticket_id: String,
    pub(crate) index: u64,
    pub(crate) node: String,
    pub(crate) reason: String,
}

/// One row of the lineage file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LineageEntry {
    pub(crate) key: ArtifactKey,
    pub(crate) served_model: String,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_usd: Option<f64>,
    /// True when this build called the model, false when the artifact came from the cache.
    pub(crate) generated: bool,
    pub(crate) created_unix_ms: u64,
}

impl LineageEntry {
    pub(crate) fn of(artifact: &ArtifactSummary, generated: bool) -> LineageEntry {
        LineageEntry {
            key: artifact.key,
            served_model: artifact.served_model.clone(),
            input_tokens: artifact.usage.input_tokens,
            output_tokens: artifact.usage.output_tokens,
            cost_usd: artifact.cost_usd,
            generated,
            created_unix_ms: artifact.created_unix_ms,
        }
    }
}

/// A finished ticket: its sample and each node's output (`None` when skipped), in graph order.
#[derive(Debug, Clone)]
pub(crate) struct TicketRecord {
    pub(crate) sample: TicketSample,
    pub(crate) outputs: Vec<Option<NodeOutput>>,
    /// How each node's output was made; written to the lineage file when it is enabled.
    pub(crate) lineage: Vec<Option<LineageEntry>>,
}

/// One cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Str(String),
    List(Vec<String>),
    /// A moment: its text (RFC 3339, for CSV and JSONL) and milliseconds since the epoch (for
    /// Parquet's timestamp type).
    Time(String, i64),
}

#[derive(Debug, Clone)]
enum ResolvedSource {
    TicketId,
    Language,
    Table(usize),
    Sampler(usize),
    Input(usize),
    Node(usize),
    NodeField(usize, String),
}

#[derive(Debug, Clone)]
struct ResolvedColumn {
    name: String,
    sources: Vec<ResolvedSource>,
    is_list: bool,
    /// The time zone of a column of moments (a `datetime` sampler), stored as a Parquet
    /// timestamp in that zone.
    time_zone: Option<String>,
}

/// Turns records into rows of cells, one per output column.
#[derive(Debug, Clone)]
pub(crate) struct RowBuilder {
    columns: Vec<ResolvedColumn>,
}

impl RowBuilder {
    pub(crate) fn new(config: &Config, graph: &Graph) -> RowBuilder {
        let node_index = |name: &str| graph.nodes.iter().position(|n| n.name == name);
        let columns = config
            .columns
            .iter()
            .map(|column| {
                let sources: Vec<ResolvedSource> = column
                    .sources
                    .iter()
                    .filter_map(|source| {
                        Some(match source {
                            Source::TicketId => ResolvedSource::TicketId,
                            Source::Language => ResolvedSource::Language,
                            Source::Table(t) => ResolvedSource::Table(
                                config.tables.iter().position(|x| &x.name == t)?,
                            ),
                            Source::Sampler(v) => ResolvedSource::Sampler(
                                config.samplers.iter().position(|x| &x.name == v)?,
                            ),
                            Source::Input(c) => ResolvedSource::Input(
                                config
                                    .input
                                    .as_ref()?
                                    .rows
                                    .columns()
                                    .iter()
                                    .position(|x| x == c)?,
                            ),
                            Source::Node(n) => ResolvedSource::Node(node_index(n)?),
                            Source::NodeField(n, f) => {
                                ResolvedSource::NodeField(node_index(n)?, f.clone())
                            }
                        })
                    })
                    .collect();
                let is_list = matches!(sources.first(), Some(ResolvedSource::Node(i))
                    if matches!(graph.nodes[*i].config.output, OutputKind::List { .. }));
                let time_zone = match sources.first() {
                    Some(ResolvedSource::Sampler(i)) => match &config.samplers[*i].kind {
                        ValueKind::DateTime { zone, .. } => Some(match zone {
                            Zone::Utc => "UTC".to_string(),
                            Zone::Named(tz) => tz.name().to_string(),
                        }),
                        _ => None,
                    },
                    _ => None,
                };
                ResolvedColumn {
                    name: column.name.clone(),
                    sources,
                    is_list,
                    time_zone,
                }
            })
            .collect();
        RowBuilder { columns }
    }

    pub(crate) fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// The position of the column called `name`.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub(crate) fn row(&self, record: &TicketRecord) -> Vec<Cell> {
        (0..self.columns.len())
            .map(|i| self.cell(i, record))
            .collect()
    }

    /// Column `index` of `record`'s row.
    pub(crate) fn cell(&self, index: usize, record: &TicketRecord) -> Cell {
        let column = &self.columns[index];
        let cell = column
            .sources
            .iter()
            .map(|source| cell_of(source, record))
            .find(|cell| *cell != Cell::Null)
            .unwrap_or(Cell::Null);
        match (cell, column.is_list) {
            (Cell::Str(s), true) => Cell::List(vec![s]),
            (Cell::List(items), false) => Cell::Str(items.join(",")),
            (cell, _) => cell,
        }
    }
}

fn cell_of(source: &ResolvedSource, record: &TicketRecord) -> Cell {
    match source {
        ResolvedSource::TicketId => Cell::Str(record.sample.ticket_id.to_string()),
        ResolvedSource::Language => Cell::Str(record.sample.language.code().to_string()),
        ResolvedSource::Table(i) => record
            .sample
            .categories
            .get(*i)
            .map_or(Cell::Null, |c| Cell::Str(c.clone())),
        ResolvedSource::Sampler(i) => match record.sample.values.get(*i) {
            Some(value) => match value.unix_ms {
                Some(ms) => Cell::Time(value.text.clone(), ms),
                None => Cell::Str(value.text.clone()),
            },
            None => Cell::Null,
        },
        ResolvedSource::Input(i) => match &record.sample.input {
            Some((_, cells)) => cells.get(*i).map_or(Cell::Null, |c| Cell::Str(c.clone())),
            None => Cell::Null,
        },
        ResolvedSource::Node(i) => match record.outputs.get(*i).and_then(Option::as_ref) {
            None => Cell::Null,
            Some(NodeOutput::Text(text)) => Cell::Str(text.clone()),
            Some(NodeOutput::List(items)) => Cell::List(items.clone()),
            Some(json @ NodeOutput::Json(_)) => Cell::Str(json.to_json().to_string()),
        },
        ResolvedSource::NodeField(i, field) => {
            match record.outputs.get(*i).and_then(Option::as_ref) {
                Some(NodeOutput::Json(map)) => {
                    map.get(field).map_or(Cell::Null, |v| Cell::Str(v.clone()))
                }
                _ => Cell::Null,
            }
        }
    }
}

/// A file being written under a temporary name, renamed into place by `finish`.
struct PendingFile {
    temporary: PathBuf,
    path: PathBuf,
}

impl PendingFile {
    fn new(dir: &Path, file_name: &str) -> PendingFile {
        PendingFile {
            temporary: dir.join(format!(".{file_name}.partial")),
            path: dir.join(file_name),
        }
    }

    fn create(&self) -> Result<File, OutputError> {
        File::create(&self.temporary).map_err(|e| write_error(&self.temporary, e))
    }

    fn commit(&self) -> Result<(), OutputError> {
        std::fs::rename(&self.temporary, &self.path).map_err(|e| write_error(&self.path, e))
    }
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> OutputError {
    OutputError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

struct ParquetSink {
    file: PendingFile,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    buffered: Vec<Vec<Cell>>,
}

/// Writes every configured format at once, row by row.
pub(crate) struct DatasetWriter {
    rows: RowBuilder,
    dir: PathBuf,
    name: String,
    csv: Option<(PendingFile, csv::Writer<BufWriter<File>>)>,
    jsonl: Option<(PendingFile, BufWriter<File>)>,
    parquet: Option<ParquetSink>,
    lineage: Option<LineageSink>,
    node_names: Vec<String>,
    escaped_names: Vec<String>,
    csv_formula_escape: bool,
}

/// A cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@` first), made plain text by a
/// leading apostrophe, as OWASP recommends for CSV exports.
pub(crate) fn formula_escaped(text: String) -> String {
    if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text
    }
}

/// The lineage file: one row per (ticket, node), so a dataset can be audited or filtered by how
/// each field was made.
struct LineageSink {
    file: PendingFile,
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    rows: Vec<(String, String, LineageEntry)>,
}

impl LineageSink {
    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![
            Field::new("ticket_id", DataType::Utf8, false),
            Field::new("node", DataType::Utf8, false),
            Field::new("artifact_key", DataType::Utf8, false),
            Field::new("model_served", DataType::Utf8, false),
            Field::new("tokens_in", DataType::UInt64, false),
            Field::new("tokens_out", DataType::UInt64, false),
            Field::new("cost_usd", DataType::Float64, true),
            Field::new("generated", DataType::Boolean, false),
            Field::new("created_unix_ms", DataType::UInt64, false),
        ]))
    }

    fn flush(&mut self) -> Result<(), OutputError> {
        use arrow_array::{BooleanArray, Float64Array, StringArray, UInt64Array};
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.key.to_hex()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.2.served_model.as_str()),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.2.input_tokens),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.2.output_tokens),
            )),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2.cost_usd))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.2.generated)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.2.created_unix_ms),
            )),
        ];
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| write_error(&self.file.temporary, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| write_error(&self.file.temporary, e))
    }
}

impl DatasetWriter {
    pub(crate) fn create(config: &Config, graph: &Graph) -> Result<DatasetWriter, OutputError> {
        let dir = config.output_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| OutputError::Folder {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let rows = RowBuilder::new(config, graph);
        let names: Vec<String> = rows.names().iter().map(|s| s.to_string()).collect();
        let mut writer = DatasetWriter {
            escaped_names: names
                .iter()
                .map(|n| serde_json::Value::String(n.clone()).to_string())
                .collect(),
            rows,
            dir,
            name: config.name.clone(),
            csv: None,
            jsonl: None,
            parquet: None,
            lineage: None,
            node_names: graph.nodes.iter().map(|n| n.name.clone()).collect(),
            csv_formula_escape: config.csv_formula_escape,
        };
        if config.lineage {
            let file = PendingFile::new(&writer.dir, &format!("{}.lineage.parquet", config.name));
            let schema = LineageSink::schema();
            let properties = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(ROW_GROUP))
                .build();
            let parquet =
                ArrowWriter::try_new(file.create()?, Arc::clone(&schema), Some(properties))
                    .map_err(|e| write_error(&file.temporary, e))?;
            writer.lineage = Some(LineageSink {
                file,
                writer: parquet,
                schema,
                rows: Vec::new(),
            });
        }
        for format in &config.formats {
            let file = PendingFile::new(
                &writer.dir,
                &format!("{}.{}", config.name, format.extension()),
            );
            match format {
                Format::Csv => {
                    let mut csv = csv::Writer::from_writer(BufWriter::new(file.create()?));
                    csv.write_record(&names)
                        .map_err(|e| write_error(&file.temporary, e))?;
                    writer.csv = Some((file, csv));
                }
                Format::Jsonl => {
                    let out = BufWriter::new(file.create()?);
                    writer.jsonl = Some((file, out));
                }
                Format::Parquet => {
                    let fields: Vec<Field> = writer
                        .rows
                        .columns
                        .iter()
                        .map(|c| {
                            let data_type = if c.is_list {
                                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
                            } else if let Some(zone) = &c.time_zone {
                                DataType::Timestamp(
                                    TimeUnit::Millisecond,
                                    Some(zone.as_str().into()),
                                )
                            } else {
                                DataType::Utf8
                            };
                            Field::new(&c.name, data_type, true)
                        })
                        .collect();
                    let schema = Arc::new(Schema::new(fields));
                    let properties = WriterProperties::builder()
                        .set_compression(Compression::SNAPPY)
                        .set_max_row_group_row_count(Some(ROW_GROUP))
                        .build();
                    let writer_file = file.create()?;
                    let parquet =
                        ArrowWriter::try_new(writer_file, Arc::clone(&schema), Some(properties))
                            .map_err(|e| write_error(&file.temporary, e))?;
                    writer.parquet = Some(ParquetSink {
                        file,
                        writer: parquet,
                        schema,
                        buffered: Vec::with_capacity(BATCH_ROWS),
                    });
                }
            }
        }
        Ok(writer)
    }

    pub(crate) fn write(&mut self, record: &TicketRecord) -> Result<(), OutputError> {
        let cells = self.rows.row(record);
        if let Some((file, csv)) = &mut self.csv {
            let escape = self.csv_formula_escape;
            let fields = cells.iter().map(|cell| {
                let text = match cell {
                    Cell::Null => String::new(),
                    Cell::Str(s) | Cell::Time(s, _) => s.clone(),
                    Cell::List(items) => items.join(","),
                };
                if escape { formula_escaped(text) } else { text }
            });
            csv.write_record(fields)
                .map_err(|e| write_error(&file.temporary, e))?;
        }
        if let Some((file, out)) = &mut self.jsonl {
            let mut line = String::from("{");
            for (i, (name, cell)) in self.escaped_names.iter().zip(&cells).enumerate() {
                if i > 0 {
                    line.push(',');
                }
                line.push_str(name);
                line.push(':');
                let value = match cell {
                    Cell::Null => serde_json::Value::Null,
                    Cell::Str(s) | Cell::Time(s, _) => serde_json::Value::String(s.clone()),
                    Cell::List(items) => items
                        .iter()
                        .cloned()
                        .map(serde_json::Value::String)
                        .collect(),
                };
                line.push_str(&value.to_string());
            }
            line.push_str("}\n");
            out.write_all(line.as_bytes())
                .map_err(|e| write_error(&file.temporary, e))?;
        }
        if let Some(lineage) = &mut self.lineage {
            let ticket_id = record.sample.ticket_id.to_string();
            for (node, entry) in self.node_names.iter().zip(&record.lineage) {
                if let Some(entry) = entry {
                    lineage
                        .rows
                        .push((ticket_id.clone(), node.clone(), entry.clone()));
                }
            }
            if lineage.rows.len() >= ROW_GROUP {
                lineage.flush()?;
            }
        }
        if let Some(parquet) = &mut self.parquet {
            parquet.buffered.push(cells);
            if parquet.buffered.len() >= BATCH_ROWS {
                parquet.flush(&self.rows)?;
            }
        }
        Ok(())
    }

    /// Writes `failures` next to the dataset, or removes a stale failures file when there are none.
    pub(crate) fn write_failures(
        &self,
        failures: &[Failure],
    ) -> Result<Option<PathBuf>, OutputError> {
        let file = PendingFile::new(&self.dir, &format!("{}.failures.jsonl", self.name));
        if failures.is_empty() {
            if file.path.exists() {
                std::fs::remove_file(&file.path).map_err(|e| write_error(&file.path, e))?;
            }
            return Ok(None);
        }
        let mut out = BufWriter::new(file.create()?);
        for failure in failures {
            let line =
                serde_json::to_string(failure).map_err(|e| write_error(&file.temporary, e))?;
            writeln!(out, "{line}").map_err(|e| write_error(&file.temporary, e))?;
        }
        out.flush().map_err(|e| write_error(&file.temporary, e))?;
        drop(out);
        file.commit()?;
        Ok(Some(file.path))
    }

    /// Completes every file and moves it into place. Returns the paths written.
    pub(crate) fn finish(mut self) -> Result<Vec<PathBuf>, OutputError> {
        let mut written = Vec::new();
        if let Some(mut parquet) = self.parquet.take() {
            parquet.flush(&self.rows)?;
            parquet
                .writer
                .close()
                .map_err(|e| write_error(&parquet.file.temporary, e))?;
            parquet.file.commit()?;
            written.push(parquet.file.path);
        }
        if let Some(mut lineage) = self.lineage.take() {
            lineage.flush()?;
            lineage
                .writer
                .close()
                .map_err(|e| write_error(&lineage.file.temporary, e))?;
            lineage.file.commit()?;
            written.push(lineage.file.path);
        }
        if let Some((file, csv)) = self.csv.take() {
            let mut inner = csv
                .into_inner()
                .map_err(|e| write_error(&file.temporary, e.error()))?;
            inner.flush().map_err(|e| write_error(&file.temporary, e))?;
            drop(inner);
            file.commit()?;
            written.push(file.path);
        }
        if let Some((file, mut out)) = self.jsonl.take() {
            out.flush().map_err(|e| write_error(&file.temporary, e))?;
            drop(out);
            file.commit()?;
            written.push(file.path);
        }
        Ok(written)
    }

    /// Drops the partial files, leaving the previous outputs in place.
    pub(crate) fn abandon(self) {
        let temporaries: Vec<PathBuf> = self
            .csv
            .iter()
            .map(|(f, _)| f.temporary.clone())
            .chain(self.jsonl.iter().map(|(f, _)| f.temporary.clone()))
            .chain(self.parquet.iter().map(|p| p.file.temporary.clone()))
            .chain(self.lineage.iter().map(|l| l.file.temporary.clone()))
            .collect();
        drop(self.lineage);
        drop(self.csv);
        drop(self.jsonl);
        drop(self.parquet);
        for path in temporaries {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl ParquetSink {
    fn flush(&mut self, rows: &RowBuilder) -> Result<(), OutputError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(rows.columns.len());
        for (c, column) in rows.columns.iter().enumerate() {
            if column.is_list {
                let mut builder = ListBuilder::new(StringBuilder::new());
                for row in &self.buffered {
                    match &row[c] {
                        Cell::List(items) => {
                            for item in items {
                                builder.values().append_value(item);
                            }
                            builder.append(true);
                        }
                        Cell::Str(s) | Cell::Time(s, _) => {
                            builder.values().append_value(s);
                            builder.append(true);
                        }
                        Cell::Null => builder.append(false),
                    }
                }
                arrays.push(Arc::new(builder.finish()));
            } else if let Some(zone) = &column.time_zone {
                let moments = self.buffered.iter().map(|row| match &row[c] {
                    Cell::Time(_, ms) => Some(*ms),
                    _ => None,
                });
                let array =
                    TimestampMillisecondArray::from_iter(moments).with_timezone(zone.as_str());
                arrays.push(Arc::new(array));
            } else {
                let mut builder = StringBuilder::new();
                for row in &self.buffered {
                    match &row[c] {
                        Cell::Str(s) | Cell::Time(s, _) => builder.append_value(s),
                        Cell::List(items) => builder.append_value(items.join(",")),
                        Cell::Null => builder.append_null(),
                    }
                }
                arrays.push(Arc::new(builder.finish()));
            }
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), arrays)
            .map_err(|e| write_error(&self.file.temporary, e))?;
        self.writer
            .write(&batch)
            .map_err(|e| write_error(&self.file.temporary, e))?;
        self.buffered.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::formula_escaped;

    #[test]
    fn formulas_are_escaped_and_other_text_is_not() {
        assert_eq!(
            formula_escaped("=HYPERLINK(\"x\")".into()),
            "'=HYPERLINK(\"x\")"
        );
        assert_eq!(formula_escaped("+1".into()), "'+1");
        assert_eq!(formula_escaped("-2".into()), "'-2");
        assert_eq!(formula_escaped("@SUM(A1)".into()), "'@SUM(A1)");
        assert_eq!(formula_escaped("Hello = world".into()), "Hello = world");
        assert_eq!(formula_escaped(String::new()), "");
    }
}
