//! Input rows: the user's own rows (CSV, JSONL or Parquet) as the starting point of tickets.
//!
//! This module owns reading an input file by row number without holding it: opening it checks
//! every row once (valid UTF-8, a CSV record as wide as the header, a JSONL line that is an
//! object) and keeps the byte offset of every [`STRIDE`]th row (256 KB for a million rows) and a
//! BLAKE3 hash of the whole file; a row is then read on demand from the offset before it (Parquet:
//! from its row group, the last one decoded kept). Values are text: strings as they are, other JSON or
//! Parquet values as JSON text, null as empty. The invariant: `row(i)` returns the same values for
//! the same file, and `content_hash` changes whenever any byte of the file does.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A problem with the input file, located by row (1-based, the header not counted) and column.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}{}: {reason}", path.display(), row.map(|r| format!(": row {r}")).unwrap_or_default(), column.as_ref().map(|c| format!(", column `{c}`")).unwrap_or_default())]
pub struct InputError {
    pub path: PathBuf,
    pub row: Option<u64>,
    pub column: Option<String>,
    pub reason: String,
}

/// Rows between two kept offsets: a lookup reads at most this many rows to reach its own.
const STRIDE: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputFormat {
    Csv,
    Jsonl,
    Parquet,
}

/// An input file, checked and indexed.
#[derive(Debug)]
pub struct InputRows {
    path: PathBuf,
    format: InputFormat,
    columns: Vec<String>,
    /// Byte offset of rows 0, STRIDE, 2 x STRIDE, ... (CSV, JSONL).
    offsets: Vec<u64>,
    /// First row of each Parquet row group, and the number of rows.
    groups: Vec<u64>,
    rows: u64,
    content_hash: String,
    /// The Parquet row group decoded last, as text.
    decoded: Mutex<Option<(usize, Vec<Vec<String>>)>>,
}

impl InputRows {
    /// Opens, checks and indexes `path`. Every bad row is returned, not only the first.
    pub fn open(path: &Path) -> Result<InputRows, Vec<InputError>> {
        let error = |reason: String| {
            vec![InputError {
                path: path.to_path_buf(),
                row: None,
                column: None,
                reason,
            }]
        };
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => InputFormat::Csv,
            Some("jsonl" | "ndjson") => InputFormat::Jsonl,
            Some("parquet") => InputFormat::Parquet,
            _ => {
                return Err(error(
                    "an input file must be CSV (.csv), JSONL (.jsonl) or Parquet (.parquet)".into(),
                ));
            }
        };
        let content_hash = hash_file(path).map_err(|e| error(e.to_string()))?;
        let mut rows = InputRows {
            path: path.to_path_buf(),
            format,
            columns: Vec::new(),
            offsets: Vec::new(),
            groups: Vec::new(),
            rows: 0,
            content_hash,
            decoded: Mutex::new(None),
        };
        match format {
            InputFormat::Csv => rows.index_csv()?,
            InputFormat::Jsonl => rows.index_jsonl()?,
            InputFormat::Parquet => rows.index_parquet().map_err(|e| error(e.to_string()))?,
        }
        if rows.rows == 0 {
            return Err(error("the input file has no rows".into()));
        }
        Ok(rows)
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn len(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// BLAKE3 of the file's bytes: what a build's inputs hash includes.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    fn problem(&self, row: u64, column: Option<&str>, reason: impl Into<String>) -> InputError {
        InputError {
            path: self.path.clone(),
            row: Some(row),
            column: column.map(str::to_string),
            reason: reason.into(),
        }
    }

    fn index_csv(&mut self) -> Result<(), Vec<InputError>> {
        let open = |path: &Path| File::open(path).map(BufReader::new);
        let file = open(&self.path).map_err(|e| vec![self.problem(0, None, e.to_string())])?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(file);
        let headers = reader
            .byte_headers()
            .map_err(|e| vec![self.problem(0, None, e.to_string())])?
            .clone();
        let mut problems = Vec::new();
        for (i, name) in headers.iter().enumerate() {
            match std::str::from_utf8(name) {
                Ok(name) => self.columns.push(name.to_string()),
                Err(_) => {
                    problems.push(self.problem(0, None, format!("header {} is not UTF-8", i + 1)));
                    self.columns.push(String::new());
                }
            }
        }
        let mut record = csv::ByteRecord::new();
        loop {
            let position = reader.position().byte();
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    problems.push(self.problem(self.rows + 1, None, e.to_string()));
                    break;
                }
            }
            if self.rows % STRIDE == 0 {
                self.offsets.push(position);
            }
            self.rows += 1;
            for (field, column) in record.iter().zip(&self.columns) {
                if std::str::from_utf8(field).is_err() && problems.len() < 20 {
                    problems.push(self.problem(self.rows, Some(column), "not valid UTF-8"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn index_jsonl(&mut self) -> Result<(), Vec<InputError>> {
        let file =
            File::open(&self.path).map_err(|e| vec![self.problem(0, None, e.to_string())])?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut offset = 0u64;
        let mut problems = Vec::new();
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| vec![self.problem(self.rows + 1, None, e.to_string())])?;
            if read == 0 {
                break;
            }
            let start = offset;
            offset += read as u64;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.rows % STRIDE == 0 {
                self.offsets.push(start);
            }
            self.rows += 1;
            match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&line) {
                Ok(object) => {
                    for key in object.keys() {
                        if !self.columns.contains(key) {
                            self.columns.push(key.clone());
                        }
                    }
                }
                Err(e) if problems.len() < 20 => {
                    problems.push(self.problem(self.rows, None, format!("not a JSON object ({e})")))
                }
                Err(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn index_parquet(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&self.path)?)?;
        self.columns = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        for field in builder.schema().fields() {
            use arrow_schema::DataType;
            if !matches!(
                field.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Float64
                    | DataType::Boolean
            ) {
                return Err(format!(
                    "column `{}` is {}; input columns must be text, integers, floats or booleans",
                    field.name(),
                    field.data_type()
                )
                .into());
            }
        }
        for group in builder.metadata().row_groups() {
            self.groups.push(self.rows);
            self.rows += u64::try_from(group.num_rows()).unwrap_or(0);
        }
        Ok(())
    }

    /// The values of row `index` (0-based), one per column.
    pub fn row(&self, index: u64) -> Result<Vec<String>, InputError> {
        let fail = |reason: String| self.problem(index + 1, None, reason);
        if index >= self.rows {
            return Err(fail("no such row".into()));
        }
        let open_at = || -> Result<BufReader<File>, InputError> {
            let offset = self.offsets[(index / STRIDE) as usize];
            let mut file = File::open(&self.path).map_err(|e| fail(e.to_string()))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| fail(e.to_string()))?;
            Ok(BufReader::new(file))
        };
        match self.format {
            InputFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(open_at()?);
                let mut record = csv::StringRecord::new();
                for _ in 0..=index % STRIDE {
                    reader
                        .read_record(&mut record)
                        .map_err(|e| fail(e.to_string()))?;
                }
                Ok((0..self.columns.len())
                    .map(|i| record.get(i).unwrap_or("").to_string())
                    .collect())
            }
            InputFormat::Jsonl => {
                let mut reader = open_at()?;
                let mut line = String::new();
                let mut skip = index % STRIDE;
                loop {
                    line.clear();
                    if reader
                        .read_line(&mut line)
                        .map_err(|e| fail(e.to_string()))?
                        == 0
                    {
                        return Err(fail("no such row".into()));
                    }
                    if line.trim().is_empty() {
                        continue;
                    }
                    if skip == 0 {
                        break;
                    }
                    skip -= 1;
                }
                let mut object: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&line).map_err(|e| fail(e.to_string()))?;
                Ok(self
                    .columns
                    .iter()
                    .map(|c| json_text(object.remove(c)))
                    .collect())
            }
            InputFormat::Parquet => self.parquet_row(index).map_err(|e| fail(e.to_string())),
        }
    }

    fn parquet_row(&self, index: u64) -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let group = self
            .groups
            .partition_point(|first| *first <= index)
            .saturating_sub(1);
        let within = (index - self.groups[group]) as usize;
        // Only whole groups are stored: a panicking holder leaves a usable cache.
        let mut decoded = self
            .decoded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if decoded.as_ref().is_none_or(|(g, _)| *g != group) {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&self.path)?)?
                .with_row_groups(vec![group])
                .build()?;
            let mut rows = Vec::new();
            for batch in reader {
                append_rows(&batch?, &mut rows)?;
            }
            *decoded = Some((group, rows));
        }
        let rows = decoded
            .as_ref()
            .map(|(_, rows)| rows)
            .ok_or("no row group")?;
        Ok(rows.get(within).cloned().ok_or("no such row")?)
    }
}

/// The rows of a batch as text, one value per column.
fn append_rows(
    batch: &RecordBatch,
    rows: &mut Vec<Vec<String>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| arrow_cast_text(c.as_ref()))
        .collect();
    for row in 0..batch.num_rows() {
        rows.push(formatters.iter().map(|f| f(row)).collect());
    }
    Ok(())
}

/// A function giving row `i` of `array` as text.
fn arrow_cast_text(array: &dyn Array) -> Box<dyn Fn(usize) -> String + '_> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int32Type, Int64Type};
    use arrow_schema::DataType;
    match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Box::new(move |i| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            })
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Box::new(move |i| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            })
        }
        DataType::Int64 => {
            let a = array.as_primitive::<Int64Type>();
            Box::new(move |i| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            })
        }
        DataType::Int32 => {
            let a = array.as_primitive::<Int32Type>();
            Box::new(move |i| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            })
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            Box::new(move |i| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            })
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            Box::new(move |i| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            })
        }
        _ => Box::new(|_| String::new()),
    }
}

fn json_text(value: Option<serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(text)) => text,
        Some(other) => other.to_string(),
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hasher.finalize().to_hex().to_string());
        }
        hasher.update(&buffer[..read]);
    }
}
