//! Reading a written dataset back, one row at a time.
//!
//! The report is computed from the files the user got, not from the cache, so that it describes
//! exactly what they will load. This module finds the file to read (JSONL, else Parquet, else CSV:
//! in that order because JSONL keeps lists and is the cheapest to stream) and hands every row to a
//! callback as [`Cell`]s in the order of the columns asked for. Memory holds one line of JSONL, one
//! Parquet batch of [`BATCH_ROWS`] rows or one CSV record, whatever the number of rows.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow_array::{Array, ListArray, RecordBatch, StringArray, TimestampMillisecondArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::ReportError;
use crate::config::{Config, Format};
use crate::sampling::{Zone, format_moment};

/// Rows per Parquet batch read.
const BATCH_ROWS: usize = 1024;

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Text(String),
    List(Vec<String>),
}

impl Cell {
    /// The text of a text cell; `None` for lists and nulls.
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(text) => Some(text),
            _ => None,
        }
    }
}

/// The dataset file a report reads, and its format.
pub(crate) struct DatasetFile {
    pub(crate) path: PathBuf,
    pub(crate) format: Format,
}

impl DatasetFile {
    /// The written file to read: JSONL, else Parquet, else CSV, among the configured formats;
    /// `None` when none of them exists.
    pub(crate) fn find(config: &Config) -> Option<DatasetFile> {
        [Format::Jsonl, Format::Parquet, Format::Csv]
            .into_iter()
            .filter(|format| config.formats.contains(format))
            .map(|format| DatasetFile {
                path: config
                    .output_dir
                    .join(format!("{}.{}", config.name, format.extension())),
                format,
            })
            .find(|file| file.path.is_file())
    }

    /// Calls `each` with every row's cells, in the order of `columns` (a column the file lacks is
    /// null), and `lists[i]` telling whether column `i` holds lists (CSV joins them with commas).
    /// Returns the rows read.
    pub(crate) fn for_each_row(
        &self,
        columns: &[String],
        lists: &[bool],
        each: &mut dyn FnMut(&[Cell]),
    ) -> Result<u64, ReportError> {
        match self.format {
            Format::Jsonl => read_jsonl(&self.path, columns, each),
            Format::Parquet => read_parquet(&self.path, columns, each),
            Format::Csv => read_csv(&self.path, columns, lists, each),
        }
    }
}

fn read_error(path: &Path, reason: impl std::fmt::Display) -> ReportError {
    ReportError::Read {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_jsonl(
    path: &Path,
    columns: &[String],
    each: &mut dyn FnMut(&[Cell]),
) -> Result<u64, ReportError> {
    let file = File::open(path).map_err(|e| read_error(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = String::new();
    let mut cells = vec![Cell::Null; columns.len()];
    let mut rows = 0;
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .map_err(|e| read_error(path, e))?
            == 0
        {
            return Ok(rows);
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
            .map_err(|e| read_error(path, format!("line {}: {e}", rows + 1)))?;
        for (cell, name) in cells.iter_mut().zip(columns) {
            *cell = match row.remove(name) {
                Some(serde_json::Value::String(text)) => Cell::Text(text),
                Some(serde_json::Value::Array(items)) => Cell::List(
                    items
                        .into_iter()
                        .filter_map(|item| match item {
                            serde_json::Value::String(text) => Some(text),
                            _ => None,
                        })
                        .collect(),
                ),
                Some(serde_json::Value::Number(n)) => Cell::Text(n.to_string()),
                _ => Cell::Null,
            };
        }
        rows += 1;
        each(&cells);
    }
}

fn read_parquet(
    path: &Path,
    columns: &[String],
    each: &mut dyn FnMut(&[Cell]),
) -> Result<u64, ReportError> {
    let file = File::open(path).map_err(|e| read_error(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| read_error(path, e))?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| read_error(path, e))?;
    let mut rows = 0;
    let mut cells = vec![Cell::Null; columns.len()];
    for batch in reader {
        let batch = batch.map_err(|e| read_error(path, e))?;
        let arrays: Vec<Option<&dyn Array>> = columns
            .iter()
            .map(|name| batch_column(&batch, name))
            .collect();
        for row in 0..batch.num_rows() {
            for (cell, array) in cells.iter_mut().zip(&arrays) {
                *cell = array.map_or(Cell::Null, |array| parquet_cell(array, row));
            }
            rows += 1;
            each(&cells);
        }
    }
    Ok(rows)
}

fn batch_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a dyn Array> {
    batch.column_by_name(name).map(|array| array.as_ref())
}

/// Row `row` of a `Utf8` or `List<Utf8>` column (the types the dataset writer uses).
fn parquet_cell(array: &dyn Array, row: usize) -> Cell {
    if array.is_null(row) {
        return Cell::Null;
    }
    if let Some(strings) = array.as_any().downcast_ref::<StringArray>() {
        return Cell::Text(strings.value(row).to_string());
    }
    if let Some(moments) = array.as_any().downcast_ref::<TimestampMillisecondArray>() {
        // As the text files write it: RFC 3339 in the column's zone.
        let zone = moments
            .timezone()
            .filter(|name| *name != "UTC")
            .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
            .map_or(Zone::Utc, Zone::Named);
        return Cell::Text(format_moment(moments.value(row).div_euclid(1000), zone));
    }
    if let Some(lists) = array.as_any().downcast_ref::<ListArray>() {
        let items = lists.value(row);
        if let Some(strings) = items.as_any().downcast_ref::<StringArray>() {
            return Cell::List(
                (0..strings.len())
                    .filter(|&i| !strings.is_null(i))
                    .map(|i| strings.value(i).to_string())
                    .collect(),
            );
        }
    }
    Cell::Null
}

fn read_csv(
    path: &Path,
    columns: &[String],
    lists: &[bool],
    each: &mut dyn FnMut(&[Cell]),
) -> Result<u64, ReportError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| read_error(path, e))?;
    let headers = reader.headers().map_err(|e| read_error(path, e))?.clone();
    let positions: Vec<Option<usize>> = columns
        .iter()
        .map(|name| headers.iter().position(|h| h == name))
        .collect();
    let mut cells = vec![Cell::Null; columns.len()];
    let mut record = csv::StringRecord::new();
    let mut rows = 0;
    while reader
        .read_record(&mut record)
        .map_err(|e| read_error(path, e))?
    {
        for ((cell, position), list) in cells.iter_mut().zip(&positions).zip(lists) {
            *cell = match position.and_then(|p| record.get(p)) {
                None | Some("") => Cell::Null,
                Some(text) if *list => Cell::List(text.split(',').map(str::to_string).collect()),
                Some(text) => Cell::Text(text.to_string()),
            };
        }
        rows += 1;
        each(&cells);
    }
    Ok(rows)
}
