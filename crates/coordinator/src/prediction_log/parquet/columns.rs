//! Records as Parquet columns: the schema, and a buffer of rows kept column by column (values
//! plus the definition and repetition levels of Parquet's Dremel encoding) until they are
//! written as one row group.
//!
//! The schema is flat so that pandas and pyarrow read it without help: scalars, lists of
//! strings, the combined `label` and `probabilities` as typed list columns, and the nested parts
//! (`members` with each member's output, `outputs`, `inputs`) as JSON text, exactly as in the
//! JSON Lines format, so that a Parquet row converts back to the same [`Record`].

use super::super::record::{Record, TensorRecord};
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int64Type};
use parquet::errors::Result;
use parquet::file::writer::SerializedRowGroupWriter;
use std::io::Write;

/// The schema, in the order of [`Columns::push`]. `time` is the answer's instant as a UTC
/// timestamp (pandas: `datetime64[ms, UTC]`), `unix_ms` the same number as in JSON Lines.
pub const SCHEMA: &str = "
message prediction {
  required binary id (STRING);
  required int64 time (TIMESTAMP(MILLIS,true));
  required int64 unix_ms;
  required binary ensemble (STRING);
  required binary ensemble_version (STRING);
  optional binary protocol (STRING);
  optional binary key (STRING);
  required int64 latency_us;
  optional group label (LIST) { repeated group list { required int64 element; } }
  optional group probabilities (LIST) { repeated group list { required float element; } }
  required group used (LIST) { repeated group list { required binary element (STRING); } }
  required group failed (LIST) { repeated group list { required binary element (STRING); } }
  required group late (LIST) { repeated group list { required binary element (STRING); } }
  required group retried (LIST) { repeated group list { required binary element (STRING); } }
  required group hedged (LIST) { repeated group list { required binary element (STRING); } }
  required binary members (STRING);
  required binary outputs (STRING);
  optional binary inputs (STRING);
  optional binary input_hash (STRING);
}
";

enum Values {
    Bytes(Vec<ByteArray>),
    I64(Vec<i64>),
    F32(Vec<f32>),
}

/// Which levels a leaf column has: none (required scalar), definition levels (optional
/// scalar), or both (list).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Required,
    Optional,
    List,
}

/// One leaf column's buffered values and levels.
struct Column {
    values: Values,
    shape: Shape,
    def: Vec<i16>,
    rep: Vec<i16>,
}

impl Column {
    fn new(values: Values, shape: Shape) -> Column {
        Column {
            values,
            shape,
            def: Vec::new(),
            rep: Vec::new(),
        }
    }
}

/// Rows buffered column by column.
pub struct Columns {
    columns: Vec<Column>,
    rows: usize,
    /// About how many bytes the buffered values take (for rotation and row-group size).
    bytes: usize,
}

impl Default for Columns {
    fn default() -> Self {
        use Shape::*;
        let bytes = || Values::Bytes(Vec::new());
        let int = || Values::I64(Vec::new());
        let columns = vec![
            Column::new(bytes(), Required),             // id
            Column::new(int(), Required),               // time
            Column::new(int(), Required),               // unix_ms
            Column::new(bytes(), Required),             // ensemble
            Column::new(bytes(), Required),             // ensemble_version
            Column::new(bytes(), Optional),             // protocol
            Column::new(bytes(), Optional),             // key
            Column::new(int(), Required),               // latency_us
            Column::new(int(), List),                   // label
            Column::new(Values::F32(Vec::new()), List), // probabilities
            Column::new(bytes(), List),                 // used
            Column::new(bytes(), List),                 // failed
            Column::new(bytes(), List),                 // late
            Column::new(bytes(), List),                 // retried
            Column::new(bytes(), List),                 // hedged
            Column::new(bytes(), Required),             // members
            Column::new(bytes(), Required),             // outputs
            Column::new(bytes(), Optional),             // inputs
            Column::new(bytes(), Optional),             // input_hash
        ];
        Columns {
            columns,
            rows: 0,
            bytes: 0,
        }
    }
}

impl Columns {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds one record as a row.
    pub fn push(&mut self, record: &Record) {
        let label = combined(record, "label").and_then(integers);
        let probabilities = combined(record, "probabilities").and_then(floats);
        let mut c = self.columns.iter_mut();
        let mut next = || c.next().expect("one column per schema leaf");
        let bytes = &mut self.bytes;
        required_bytes(next(), record.id.clone().into_bytes(), bytes);
        required_i64(next(), record.unix_ms, bytes);
        required_i64(next(), record.unix_ms, bytes);
        required_bytes(next(), record.ensemble.clone().into_bytes(), bytes);
        required_bytes(next(), record.ensemble_version.clone().into_bytes(), bytes);
        optional_bytes(
            next(),
            record.protocol.clone().map(String::into_bytes),
            bytes,
        );
        optional_bytes(next(), record.key.clone().map(String::into_bytes), bytes);
        required_i64(
            next(),
            i64::try_from(record.latency_us).unwrap_or(i64::MAX),
            bytes,
        );
        list(
            next(),
            true,
            label.map(|l| l.into_iter().map(Item::I64)),
            bytes,
        );
        list(
            next(),
            true,
            probabilities.map(|p| p.into_iter().map(Item::F32)),
            bytes,
        );
        for names in [
            &record.used,
            &record.failed,
            &record.late,
            &record.retried,
            &record.hedged,
        ] {
            let items = names.iter().map(|n| Item::Bytes(n.clone().into_bytes()));
            list(next(), false, Some(items), bytes);
        }
        required_bytes(next(), json(&record.members), bytes);
        required_bytes(next(), json(&record.outputs), bytes);
        optional_bytes(next(), record.inputs.as_ref().map(json), bytes);
        optional_bytes(
            next(),
            record.input_hash.clone().map(String::into_bytes),
            bytes,
        );
        self.rows += 1;
    }

    /// Writes the buffered rows as the columns of `group` and empties the buffer.
    pub fn write<W: Write + Send>(
        &mut self,
        group: &mut SerializedRowGroupWriter<'_, W>,
    ) -> Result<()> {
        for column in &mut self.columns {
            let mut writer = group
                .next_column()?
                .expect("the schema has one leaf per buffered column");
            let def = (column.shape != Shape::Required).then_some(&column.def[..]);
            let rep = (column.shape == Shape::List).then_some(&column.rep[..]);
            match &column.values {
                Values::Bytes(v) => writer.typed::<ByteArrayType>().write_batch(v, def, rep)?,
                Values::I64(v) => writer.typed::<Int64Type>().write_batch(v, def, rep)?,
                Values::F32(v) => writer.typed::<FloatType>().write_batch(v, def, rep)?,
            };
            writer.close()?;
            match &mut column.values {
                Values::Bytes(v) => v.clear(),
                Values::I64(v) => v.clear(),
                Values::F32(v) => v.clear(),
            }
            column.def.clear();
            column.rep.clear();
        }
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }
}

/// A record's nested part as JSON text; records are plain data, so this cannot fail.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data")
}

/// The combined output called `name`.
fn combined<'a>(record: &'a Record, name: &str) -> Option<&'a TensorRecord> {
    record.outputs.iter().find(|t| t.name == name)
}

/// An integer tensor's values; `None` for any other type (the JSON column keeps it whole).
fn integers(tensor: &TensorRecord) -> Option<Vec<i64>> {
    tensor
        .data
        .as_ref()?
        .as_array()?
        .iter()
        .map(serde_json::Value::as_i64)
        .collect()
}

/// A float tensor's values as FP32 (the combiners' type: exact).
fn floats(tensor: &TensorRecord) -> Option<Vec<f32>> {
    if !tensor.datatype.starts_with("FP") {
        return None;
    }
    tensor
        .data
        .as_ref()?
        .as_array()?
        .iter()
        .map(|v| v.as_f64().map(|f| f as f32))
        .collect()
}

enum Item {
    Bytes(Vec<u8>),
    I64(i64),
    F32(f32),
}

fn put(column: &mut Column, item: Item, bytes: &mut usize) {
    match (&mut column.values, item) {
        (Values::Bytes(v), Item::Bytes(b)) => {
            *bytes += b.len() + 4;
            v.push(b.into());
        }
        (Values::I64(v), Item::I64(i)) => {
            *bytes += 8;
            v.push(i);
        }
        (Values::F32(v), Item::F32(f)) => {
            *bytes += 4;
            v.push(f);
        }
        _ => unreachable!("each column is pushed its own type by `Columns::push`"),
    }
}

fn required_bytes(column: &mut Column, value: Vec<u8>, bytes: &mut usize) {
    put(column, Item::Bytes(value), bytes);
}

fn required_i64(column: &mut Column, value: i64, bytes: &mut usize) {
    put(column, Item::I64(value), bytes);
}

/// An optional scalar: definition level 1 when present, 0 when null.
fn optional_bytes(column: &mut Column, value: Option<Vec<u8>>, bytes: &mut usize) {
    match value {
        Some(v) => {
            column.def.push(1);
            put(column, Item::Bytes(v), bytes);
        }
        None => column.def.push(0),
    }
}

/// A three-level LIST of required elements. Definition levels: for an optional list 0 null,
/// 1 empty, 2 an element; for a required list 0 empty, 1 an element. Repetition level 0 starts
/// the row, 1 continues its list.
fn list(
    column: &mut Column,
    optional: bool,
    items: Option<impl Iterator<Item = Item>>,
    bytes: &mut usize,
) {
    let element = if optional { 2 } else { 1 };
    let Some(items) = items else {
        column.def.push(0);
        column.rep.push(0);
        return;
    };
    let mut first = true;
    for item in items {
        column.def.push(element);
        column.rep.push(if first { 0 } else { 1 });
        first = false;
        put(column, item, bytes);
    }
    if first {
        // No element: an empty list.
        column.def.push(element - 1);
        column.rep.push(0);
    }
}
