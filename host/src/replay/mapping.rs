//! CSV column mappings: how `vigil replay` turns rows of a labelled history
//! file into canonical events.
//!
//! A mapping names, for each event field, the column it comes from (or a
//! constant) and how to convert it. Each row becomes one JSON event line that
//! goes through the same decoder as live traffic, so PANs are tokenised at
//! ingest and a row the decoder refuses is dead-lettered with its reason. A
//! cell that cannot be converted is passed on as written, so the decoder's
//! rejection names the field.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::decode::Tokenizer;

/// A mapping file, e.g. `examples/card-transactions.mapping.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Mapping {
    /// CSV dialect.
    #[serde(default)]
    pub csv: CsvOptions,
    /// The column holding the fraud label, if any.
    #[serde(default)]
    pub label: Option<String>,
    /// Event field (dotted: `card.pan`, `attrs.category`) → where it comes from.
    pub fields: BTreeMap<String, FieldSource>,
}

/// CSV dialect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CsvOptions {
    /// Field delimiter, one byte.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Replay rows in event-time order (stable) rather than file order.
    #[serde(default = "default_true")]
    pub sort_by_time: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { delimiter: default_delimiter(), sort_by_time: true }
    }
}

fn default_delimiter() -> char {
    ','
}

fn default_true() -> bool {
    true
}

/// Where one field comes from: a column name, or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldSource {
    /// The column's text, converted to the field's type.
    Column(String),
    /// A column with a conversion, or a constant.
    Spec(FieldSpec),
}

/// A column with a conversion, or a constant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FieldSpec {
    /// The column.
    pub column: Option<String>,
    /// A constant instead of a column.
    pub value: Option<toml::Value>,
    /// For `ts`: the column holds epoch seconds (`s`) or milliseconds (`ms`).
    pub unit: Option<TimeUnit>,
    /// For `amount`: the column is a decimal with this many digits in the
    /// minor unit (2 for dollars → cents).
    pub decimals: Option<u32>,
    /// Replace the value by its PAN token (for ids that are card numbers).
    #[serde(default)]
    pub tokenise: bool,
}

/// Unit of an epoch time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeUnit {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
}

/// The JSON type an event field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    Float,
    Bool,
}

/// The event fields a mapping may fill, with their types.
const FIELDS: &[(&str, Ty)] = &[
    ("id", Ty::Str),
    ("ts", Ty::Int),
    ("channel", Ty::Str),
    ("kind", Ty::Str),
    ("amount", Ty::Int),
    ("currency", Ty::Str),
    ("account", Ty::Str),
    ("card.pan", Ty::Str),
    ("card.country", Ty::Str),
    ("card.present", Ty::Bool),
    ("merchant.id", Ty::Str),
    ("merchant.mcc", Ty::Int),
    ("merchant.country", Ty::Str),
    ("counterparty.id", Ty::Str),
    ("counterparty.mcc", Ty::Int),
    ("counterparty.country", Ty::Str),
    ("device", Ty::Str),
    ("ip", Ty::Str),
    ("geo.country", Ty::Str),
    ("geo.lat", Ty::Float),
    ("geo.lon", Ty::Float),
];

fn field_type(path: &str) -> Option<Ty> {
    if path.strip_prefix("attrs.").is_some_and(|k| !k.is_empty()) {
        return Some(Ty::Str);
    }
    FIELDS.iter().find(|(p, _)| *p == path).map(|(_, t)| *t)
}

/// Why a mapping cannot be used: the file cannot be read, or a mistake in
/// it, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The file could not be read.
    #[error("cannot read mapping {}", path.display())]
    Read {
        /// The mapping file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not TOML, or has a key a mapping does not.
    #[error("mapping {}", path.display())]
    Parse {
        /// The mapping file.
        path: PathBuf,
        /// The parser's error, with the key and line.
        source: toml::de::Error,
    },
    /// A key's value makes no sense.
    #[error("mapping {file}: {key}: {problem}")]
    Invalid {
        /// The mapping file.
        file: String,
        /// The dotted key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A column the mapping names is not in the CSV file's header.
    #[error(
        "mapping {key}: column `{column}` is not in the header of {} (columns: {})",
        file.display(),
        columns.join(", ")
    )]
    NoColumn {
        /// The dotted key naming the column.
        key: String,
        /// The column named.
        column: String,
        /// The CSV file.
        file: PathBuf,
        /// The header's columns.
        columns: Vec<String>,
    },
}

/// One resolved field: where it goes and how to fill it.
#[derive(Debug)]
struct Compiled {
    path: Vec<String>,
    ty: Ty,
    from: From,
}

#[derive(Debug)]
enum From {
    Const(Value),
    Column { index: usize, unit: Option<TimeUnit>, decimals: Option<u32>, tokenise: bool },
}

/// A mapping checked against a CSV header, ready to convert rows.
#[derive(Debug)]
pub struct RowMapper {
    fields: Vec<Compiled>,
    label: Option<usize>,
    ts_column: Option<usize>,
    tokenizer: Tokenizer,
}

/// One converted row.
#[derive(Debug)]
pub struct Row {
    /// The event as a JSON line.
    pub line: String,
    /// Its id, if the row had one.
    pub id: Option<String>,
    /// Its event time in milliseconds, if it could be read.
    pub ts_ms: Option<i64>,
    /// Its label: `Some(true)` for fraud.
    pub label: Option<bool>,
}

impl Mapping {
    /// Reads and checks a mapping file.
    ///
    /// # Errors
    /// [`MappingError`] naming the key at fault, or the TOML error.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| MappingError::Read { path: path.to_owned(), source })?;
        let mapping: Mapping =
            toml::from_str(&text).map_err(|source| MappingError::Parse { path: path.to_owned(), source })?;
        let err = |key: &str, problem: String| MappingError::Invalid {
            file: path.display().to_string(),
            key: key.into(),
            problem,
        };
        if !mapping.csv.delimiter.is_ascii() {
            return Err(err("csv.delimiter", "must be one ASCII character".into()));
        }
        for (key, source) in &mapping.fields {
            let at = format!("fields.{key}");
            let Some(ty) = field_type(key) else {
                let known: Vec<&str> = FIELDS.iter().map(|(p, _)| *p).collect();
                return Err(err(
                    &at,
                    format!("not an event field; expected one of {}, or attrs.NAME", known.join(", ")),
                ));
            };
            if let FieldSource::Spec(spec) = source {
                match (&spec.column, &spec.value) {
                    (Some(_), Some(_)) => return Err(err(&at, "give `column` or `value`, not both".into())),
                    (None, None) => return Err(err(&at, "needs `column` or `value`".into())),
                    _ => {}
                }
                if spec.unit.is_some() && key != "ts" {
                    return Err(err(&at, "`unit` applies to `ts` only".into()));
                }
                if spec.decimals.is_some() && key != "amount" {
                    return Err(err(&at, "`decimals` applies to `amount` only".into()));
                }
                if spec.decimals.is_some_and(|d| d > 6) {
                    return Err(err(&at, "`decimals` is at most 6".into()));
                }
                if spec.tokenise && ty != Ty::Str {
                    return Err(err(&at, "`tokenise` applies to text fields only".into()));
                }
            }
        }
        for required in ["id", "ts", "amount", "currency", "channel", "kind", "account"] {
            if !mapping.fields.contains_key(required) {
                return Err(err(&format!("fields.{required}"), "missing: every event needs it".into()));
            }
        }
        Ok(mapping)
    }

    /// Resolves column names against `header`.
    ///
    /// # Errors
    /// When a named column is not in the header.
    pub fn bind(
        &self,
        file: &Path,
        header: &csv::StringRecord,
        tokenizer: Tokenizer,
    ) -> Result<RowMapper, MappingError> {
        let column = |key: &str, name: &str| -> Result<usize, MappingError> {
            header.iter().position(|h| h.trim() == name).ok_or_else(|| MappingError::NoColumn {
                key: key.to_owned(),
                column: name.to_owned(),
                file: file.to_owned(),
                columns: header.iter().map(str::to_owned).collect(),
            })
        };
        let mut fields = Vec::new();
        let mut ts_column = None;
        for (key, source) in &self.fields {
            let ty = field_type(key).expect("checked at load");
            let at = format!("fields.{key}");
            let from = match source {
                FieldSource::Column(name) => {
                    From::Column { index: column(&at, name)?, unit: None, decimals: None, tokenise: false }
                }
                FieldSource::Spec(spec) => match (&spec.column, &spec.value) {
                    (Some(name), _) => From::Column {
                        index: column(&at, name)?,
                        unit: spec.unit,
                        decimals: spec.decimals,
                        tokenise: spec.tokenise,
                    },
                    (None, Some(v)) => From::Const(toml_to_json(v)),
                    (None, None) => unreachable!("checked at load"),
                },
            };
            if key == "ts"
                && let From::Column { index, .. } = from
            {
                ts_column = Some(index);
            }
            fields.push(Compiled { path: key.split('.').map(str::to_owned).collect(), ty, from });
        }
        let label = self.label.as_deref().map(|name| column("label", name)).transpose()?;
        Ok(RowMapper { fields, label, ts_column, tokenizer })
    }
}

fn toml_to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl RowMapper {
    /// Converts one CSV row.
    pub fn convert(&self, row: &csv::StringRecord) -> Row {
        let mut event = Map::new();
        let mut ts_ms = None;
        for f in &self.fields {
            let value = match &f.from {
                From::Const(v) => v.clone(),
                From::Column { index, unit, decimals, tokenise } => {
                    let cell = row.get(*index).unwrap_or("").trim();
                    if cell.is_empty() {
                        continue;
                    }
                    let v = convert_cell(cell, f.ty, *unit, *decimals, (*tokenise).then_some(&self.tokenizer));
                    if Some(*index) == self.ts_column {
                        ts_ms = v.as_i64();
                    }
                    v
                }
            };
            insert(&mut event, &f.path, value);
        }
        let id = event.get("id").and_then(Value::as_str).map(str::to_owned);
        let label = self.label.and_then(|i| parse_label(row.get(i).unwrap_or("")));
        Row { line: Value::Object(event).to_string(), id, ts_ms, label }
    }
}

/// Converts a cell to the field's type; a cell that does not convert is
/// passed on as text, for the decoder to reject by field name.
fn convert_cell(cell: &str, ty: Ty, unit: Option<TimeUnit>, decimals: Option<u32>, tok: Option<&Tokenizer>) -> Value {
    let text = || Value::String(cell.to_owned());
    match ty {
        Ty::Str => match tok {
            Some(t) => Value::String(t.token(cell)),
            None => text(),
        },
        Ty::Int => {
            let n = match (decimals, unit) {
                (Some(d), _) => decimal_to_minor(cell, d),
                (None, Some(TimeUnit::S)) => cell.parse::<i64>().ok().and_then(|s| s.checked_mul(1000)),
                (None, _) => cell.parse::<i64>().ok(),
            };
            n.map_or_else(text, Value::from)
        }
        Ty::Float => cell.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or_else(text, Value::Number),
        Ty::Bool => parse_label(cell).map_or_else(text, Value::Bool),
    }
}

/// `"29.84"` with 2 decimals → 2984, exactly; `None` when the text has more
/// digits after the point than `decimals`, or is not a plain decimal.
fn decimal_to_minor(cell: &str, decimals: u32) -> Option<i64> {
    let (whole, frac) = cell.split_once('.').unwrap_or((cell, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > decimals as usize
    {
        return None;
    }
    let scale = 10i64.checked_pow(decimals)?;
    let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let frac_value: i64 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    let frac_scaled = frac_value.checked_mul(10i64.checked_pow(decimals - frac.len() as u32)?)?;
    whole.checked_mul(scale)?.checked_add(frac_scaled)
}

/// A fraud label: 1/true/yes/fraud, or 0/false/no/legit; anything else is
/// no label.
pub fn parse_label(cell: &str) -> Option<bool> {
    match cell.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "fraud" => Some(true),
        "0" | "false" | "no" | "n" | "legit" | "legitimate" => Some(false),
        _ => None,
    }
}

fn insert(event: &mut Map<String, Value>, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut at = event;
    for p in parents {
        let entry = at.entry(p.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        at = entry.as_object_mut().expect("made an object above");
    }
    at.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn mapping(text: &str) -> Result<Mapping, MappingError> {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        Mapping::load(f.path())
    }

    const BASE: &str = r#"
        label = "fraud"
        [fields]
        id = "tx"
        ts = { column = "time", unit = "s" }
        amount = { column = "amt", decimals = 2 }
        currency = { value = "USD" }
        channel = { value = "card" }
        kind = { value = "purchase" }
        account = { column = "pan", tokenise = true }
        "card.pan" = "pan"
        "geo.lat" = "lat"
        "attrs.category" = "cat"
    "#;

    #[test]
    fn decimal_amounts_become_exact_minor_units() {
        assert_eq!(decimal_to_minor("29.84", 2), Some(2984));
        assert_eq!(decimal_to_minor("2.8", 2), Some(280));
        assert_eq!(decimal_to_minor("7", 2), Some(700));
        assert_eq!(decimal_to_minor(".5", 2), Some(50));
        assert_eq!(decimal_to_minor("1.005", 2), None);
        assert_eq!(decimal_to_minor("-1.00", 2), None);
        assert_eq!(decimal_to_minor("1e3", 2), None);
        assert_eq!(decimal_to_minor(".", 2), None);
    }

    #[test]
    fn a_row_becomes_a_canonical_event_with_its_label() {
        let m = mapping(BASE).expect("should succeed");
        let header = csv::StringRecord::from(vec!["tx", "time", "amt", "pan", "lat", "cat", "fraud"]);
        let mapper = m.bind(Path::new("h.csv"), &header, Tokenizer::new(b"k")).expect("should succeed");
        let row = mapper.convert(&csv::StringRecord::from(vec![
            "t1",
            "1371816865",
            "29.84",
            "4111111111111111",
            "33.98",
            "grocery",
            "1",
        ]));
        let v: Value = serde_json::from_str(&row.line).expect("should succeed");
        assert_eq!(v["id"], "t1");
        assert_eq!(v["ts"], 1_371_816_865_000i64);
        assert_eq!(v["amount"], 2984);
        assert_eq!(v["card"]["pan"], "4111111111111111");
        assert_eq!(v["account"], Tokenizer::new(b"k").token("4111111111111111"));
        assert_eq!(v["geo"]["lat"], 33.98);
        assert_eq!(v["attrs"]["category"], "grocery");
        assert_eq!((row.id.as_deref(), row.ts_ms, row.label), (Some("t1"), Some(1_371_816_865_000), Some(true)));
    }

    #[test]
    fn a_cell_that_does_not_convert_is_passed_on_for_the_decoder_to_reject() {
        let m = mapping(BASE).expect("should succeed");
        let header = csv::StringRecord::from(vec!["tx", "time", "amt", "pan", "lat", "cat", "fraud"]);
        let mapper = m.bind(Path::new("h.csv"), &header, Tokenizer::new(b"k")).expect("should succeed");
        let row = mapper.convert(&csv::StringRecord::from(vec!["t1", "soon", "12.345", "", "", "", "?"]));
        let v: Value = serde_json::from_str(&row.line).expect("should succeed");
        assert_eq!(v["amount"], "12.345");
        assert_eq!(v["ts"], "soon");
        assert!(v.get("card").is_none(), "empty cells are left out");
        assert_eq!((row.ts_ms, row.label), (None, None));
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = mapping(&BASE.replace("\"geo.lat\"", "\"geo.height\"")).expect_err("should fail").to_string();
        assert!(e.contains("fields.geo.height: not an event field"), "{e}");
        let e = mapping(&BASE.replace("id = \"tx\"", "")).expect_err("should fail").to_string();
        assert!(e.contains("fields.id: missing"), "{e}");
        let e =
            mapping(&BASE.replace("unit = \"s\"", "unit = \"s\", decimals = 2")).expect_err("should fail").to_string();
        assert!(e.contains("fields.ts: `decimals` applies to `amount` only"), "{e}");
        let m = mapping(BASE).expect("should succeed");
        let header = csv::StringRecord::from(vec!["tx", "time"]);
        let e = m.bind(Path::new("h.csv"), &header, Tokenizer::new(b"k")).expect_err("should fail").to_string();
        assert!(e.contains("fields.account: column `pan` is not in the header of h.csv"), "{e}");
    }
}
