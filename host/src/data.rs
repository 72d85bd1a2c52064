//! Task data: the WorkManager value types, their 10 KiB limit, and their
//! text and JSON forms.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most bytes a task's input, output or progress data may take when
/// serialized (WorkManager's `Data.MAX_DATA_BYTES`).
pub const MAX_DATA_BYTES: usize = 10 * 1024;

/// One value of task data: exactly the types of WorkManager's `Data`.
///
/// In JSON an integer is an `S64`, a number with a fraction or exponent an
/// `F64`, and a list takes the type of its elements; an empty list is a
/// `StringList`. The store keeps a typed form that loses no type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A signed 64-bit integer.
    S64(i64),
    /// A boolean.
    Bool(bool),
    /// A finite 64-bit float.
    F64(f64),
    /// A UTF-8 string.
    String(String),
    /// A list of integers.
    S64List(Vec<i64>),
    /// A list of booleans.
    BoolList(Vec<bool>),
    /// A list of finite floats.
    F64List(Vec<f64>),
    /// A list of strings.
    StringList(Vec<String>),
}

/// Key/value task data, ordered by key.
///
/// Build it freely; [`Data::validate`] (called by every surface that accepts
/// data) checks the rules of SPEC section 8.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Data(BTreeMap<String, Value>);

/// Why task data was refused. Every variant names the offending key where
/// there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A key is the empty string.
    #[error("data keys must not be empty")]
    EmptyKey,
    /// A key appears twice.
    #[error("key {0:?} appears more than once")]
    DuplicateKey(String),
    /// A float is NaN or infinite.
    #[error("key {0:?} holds a float that is not finite; only finite numbers are allowed")]
    NotFinite(String),
    /// A JSON value has a type outside the WorkManager types.
    #[error("key {key:?} holds {found}; values must be integers, floats, booleans, strings or lists of one of those")]
    UnsupportedType {
        /// The key.
        key: String,
        /// What was found, in words.
        found: String,
    },
    /// The data is larger than [`MAX_DATA_BYTES`].
    #[error(
        "data is {size} bytes serialized, over the {MAX_DATA_BYTES}-byte limit; the largest value is under key {largest_key:?}"
    )]
    TooLarge {
        /// Serialized size in bytes.
        size: usize,
        /// The key whose value is largest, to say where to cut.
        largest_key: String,
    },
    /// The text is not valid JSON or not an object.
    #[error("input JSON is not valid: {0}")]
    BadJson(String),
    /// A `KEY=VALUE` argument has no `=`.
    #[error("{0:?} is not of the form KEY=VALUE")]
    NotKeyValue(String),
}

/// The length of `value`'s JSON text, counted as it is written and never
/// kept (guest data may be large).
fn json_len(value: &impl Serialize) -> usize {
    /// Counts what is written, keeping nothing.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("task data always serializes");
    count.0
}

impl Data {
    /// Empty data.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Adds or replaces `key`, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The pairs, moved out, sorted by key.
    pub(crate) fn into_pairs(self) -> impl Iterator<Item = (String, Value)> {
        self.0.into_iter()
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Copies every pair of `other` over this data (the overwriting merge
    /// WorkManager uses to pass a parent's output to a child's input).
    pub fn merge(&mut self, other: &Data) {
        for (k, v) in other.iter() {
            self.0.insert(k.clone(), v.clone());
        }
    }

    /// Builds data from pairs, refusing empty and duplicate keys, then
    /// validates it.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Value)>) -> Result<Data, DataError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            match map.entry(k) {
                std::collections::btree_map::Entry::Vacant(place) => {
                    place.insert(v);
                }
                std::collections::btree_map::Entry::Occupied(taken) => {
                    return Err(DataError::DuplicateKey(taken.key().clone()));
                }
            }
        }
        let data = Data(map);
        data.validate()?;
        Ok(data)
    }

    /// The serialized size: the length of the canonical JSON form (the
    /// store keeps a typed form of it, see docs/store.md).
    pub fn serialized_size(&self) -> usize {
        json_len(self)
    }

    /// Checks the rules of SPEC section 8: non-empty keys, finite floats,
    /// at most [`MAX_DATA_BYTES`] serialized.
    pub fn validate(&self) -> Result<(), DataError> {
        for (k, v) in &self.0 {
            if k.is_empty() {
                return Err(DataError::EmptyKey);
            }
            let finite = match v {
                Value::F64(f) => f.is_finite(),
                Value::F64List(l) => l.iter().all(|f| f.is_finite()),
                _ => true,
            };
            if !finite {
                return Err(DataError::NotFinite(k.clone()));
            }
        }
        let size = self.serialized_size();
        if size > MAX_DATA_BYTES {
            let largest_key = self
                .0
                .iter()
                .max_by_key(|(k, v)| k.len() + json_len(v))
                .map(|(k, _)| k.clone())
                .unwrap_or_default();
            return Err(DataError::TooLarge { size, largest_key });
        }
        Ok(())
    }

    /// The canonical JSON form: an object with keys in order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("task data always serializes")
    }

    /// Parses a JSON object into validated data.
    pub fn from_json(text: &str) -> Result<Data, DataError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::BadJson(e.to_string()))?;
        Data::from_json_value(&value)
    }

    /// Converts a JSON object into validated data.
    pub fn from_json_value(value: &serde_json::Value) -> Result<Data, DataError> {
        let serde_json::Value::Object(object) = value else {
            return Err(DataError::BadJson(format!(
                "expected an object of KEY: VALUE pairs, found {}",
                json_kind(value)
            )));
        };
        let mut map = BTreeMap::new();
        for (k, v) in object {
            map.insert(k.clone(), Value::from_json(k, v)?);
        }
        let data = Data(map);
        data.validate()?;
        Ok(data)
    }

    /// The store's form: a JSON object whose every value names its type,
    /// `{"key": {"s64-list": []}}`, so that every value, an empty list
    /// too, reads back with the type it was written with.
    pub(crate) fn to_typed_json(&self) -> String {
        let object: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| {
                let (tag, value) = v.typed();
                (k.clone(), serde_json::json!({ tag: value }))
            })
            .collect();
        serde_json::Value::Object(object).to_string()
    }

    /// Reads the store's form ([`Self::to_typed_json`]); a value that is
    /// not a one-key object is read as the plain JSON form of stores
    /// written before it (typed from the JSON, an empty list a
    /// `StringList`). Refuses anything else, naming the key.
    pub(crate) fn from_typed_json(text: &str) -> Result<Data, DataError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DataError::BadJson(e.to_string()))?;
        let serde_json::Value::Object(object) = value else {
            return Err(DataError::BadJson(format!(
                "expected an object of KEY: VALUE pairs, found {}",
                json_kind(&value)
            )));
        };
        let mut map = BTreeMap::new();
        for (k, v) in &object {
            let value = match v {
                serde_json::Value::Object(typed) => Value::from_typed(k, typed)?,
                plain => Value::from_json(k, plain)?,
            };
            map.insert(k.clone(), value);
        }
        Ok(Data(map))
    }

    /// Parses `KEY=VALUE`, typing the value from its text: an integer, then a
    /// float, then `true`/`false`, else a string.
    pub fn parse_key_value(arg: &str) -> Result<(String, Value), DataError> {
        let (key, text) = arg
            .split_once('=')
            .ok_or_else(|| DataError::NotKeyValue(arg.to_string()))?;
        if key.is_empty() {
            return Err(DataError::EmptyKey);
        }
        let value = if let Ok(i) = text.parse::<i64>() {
            Value::S64(i)
        } else if let Some(f) = text
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && looks_numeric(text))
        {
            Value::F64(f)
        } else if text == "true" || text == "false" {
            Value::Bool(text == "true")
        } else {
            Value::String(text.to_string())
        };
        Ok((key.to_string(), value))
    }
}

/// Whether `text` is written like a number, so words such as `inf` or `NaN`
/// stay strings.
fn looks_numeric(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Value {
    /// The type's name in the WIT (`s64-list`) and the value as JSON.
    fn typed(&self) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        match self {
            Value::S64(v) => ("s64", json!(v)),
            Value::Bool(v) => ("bool", json!(v)),
            Value::F64(v) => ("f64", json!(v)),
            Value::String(v) => ("string", json!(v)),
            Value::S64List(v) => ("s64-list", json!(v)),
            Value::BoolList(v) => ("bool-list", json!(v)),
            Value::F64List(v) => ("f64-list", json!(v)),
            Value::StringList(v) => ("string-list", json!(v)),
        }
    }

    /// Reads `{"<type>": value}`, the value strictly of that type.
    fn from_typed(key: &str, typed: &serde_json::Map<String, serde_json::Value>) -> Result<Value, DataError> {
        fn list<T>(v: &serde_json::Value, item: impl Fn(&serde_json::Value) -> Option<T>) -> Option<Vec<T>> {
            v.as_array()?.iter().map(item).collect()
        }
        let bad = || DataError::UnsupportedType {
            key: key.to_string(),
            found: format!(
                "{:?}, which is not a typed value",
                serde_json::Value::Object(typed.clone()).to_string()
            ),
        };
        let mut pairs = typed.iter();
        let (Some((tag, v)), None) = (pairs.next(), pairs.next()) else {
            return Err(bad());
        };
        let f64_of = |v: &serde_json::Value| v.as_f64().filter(|f| f.is_finite());
        let value = match tag.as_str() {
            "s64" => v.as_i64().map(Value::S64),
            "bool" => v.as_bool().map(Value::Bool),
            "f64" => f64_of(v).map(Value::F64),
            "string" => v.as_str().map(|s| Value::String(s.to_string())),
            "s64-list" => list(v, |i| i.as_i64()).map(Value::S64List),
            "bool-list" => list(v, |i| i.as_bool()).map(Value::BoolList),
            "f64-list" => list(v, f64_of).map(Value::F64List),
            "string-list" => list(v, |i| i.as_str().map(str::to_string)).map(Value::StringList),
            _ => None,
        };
        value.ok_or_else(bad)
    }

    fn from_json(key: &str, v: &serde_json::Value) -> Result<Value, DataError> {
        use serde_json::Value as J;
        let unsupported = |found: &str| DataError::UnsupportedType {
            key: key.to_string(),
            found: found.to_string(),
        };
        Ok(match v {
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::S64(i),
                None if n.is_u64() => return Err(unsupported("an integer over the s64 range")),
                None => Value::F64(n.as_f64().ok_or_else(|| unsupported("a number"))?),
            },
            J::String(s) => Value::String(s.clone()),
            J::Array(items) => {
                let Some(first) = items.first() else {
                    return Ok(Value::StringList(Vec::new()));
                };
                let mixed = || unsupported("a list of mixed types");
                match first {
                    J::Bool(_) => Value::BoolList(
                        items
                            .iter()
                            .map(|i| i.as_bool().ok_or_else(mixed))
                            .collect::<Result<_, _>>()?,
                    ),
                    J::String(_) => Value::StringList(
                        items
                            .iter()
                            .map(|i| i.as_str().map(str::to_string).ok_or_else(mixed))
                            .collect::<Result<_, _>>()?,
                    ),
                    J::Number(_) if items.iter().all(|i| i.is_i64()) => {
                        Value::S64List(items.iter().filter_map(|i| i.as_i64()).collect())
                    }
                    J::Number(_) => Value::F64List(
                        items
                            .iter()
                            .map(|i| i.as_f64().ok_or_else(mixed))
                            .collect::<Result<_, _>>()?,
                    ),
                    other => {
                        return Err(unsupported(&format!(
                            "a list of {}",
                            json_kind(other).trim_start_matches("a ").trim_start_matches("an ")
                        )));
                    }
                }
            }
            other => return Err(unsupported(json_kind(other))),
        })
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident $(as $cast:ty)?),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v $(as $cast)?)
            }
        })*
    };
}

value_from! {
    i64 => S64,
    i32 => S64 as i64,
    u32 => S64 as i64,
    bool => Bool,
    f64 => F64,
    String => String,
    Vec<i64> => S64List,
    Vec<bool> => BoolList,
    Vec<f64> => F64List,
    Vec<String> => StringList,
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_survive_their_canonical_form_exactly() {
        // Found by the input_json fuzz target: without serde_json's exact
        // float parser, this integer too large for i64 became a float that
        // read back 1 ULP off from its own canonical form.
        let text = format!("{{\"ts\":[1.0,2{},0,77]}}", "1".repeat(75));
        let data = Data::from_json(&text).unwrap();
        assert_eq!(Data::from_json(&data.to_json()).unwrap(), data);
    }

    #[test]
    fn key_value_text_is_typed() {
        let cases = [
            ("n=42", Value::S64(42)),
            ("n=-3", Value::S64(-3)),
            ("x=0.5", Value::F64(0.5)),
            ("x=1e3", Value::F64(1000.0)),
            ("b=true", Value::Bool(true)),
            ("s=hello", Value::String("hello".into())),
            ("s=inf", Value::String("inf".into())),
            ("s=", Value::String(String::new())),
            ("s=a=b", Value::String("a=b".into())),
        ];
        for (arg, want) in cases {
            assert_eq!(Data::parse_key_value(arg).unwrap().1, want, "{arg}");
        }
        assert_eq!(
            Data::parse_key_value("novalue"),
            Err(DataError::NotKeyValue("novalue".into()))
        );
        assert_eq!(Data::parse_key_value("=1"), Err(DataError::EmptyKey));
    }

    #[test]
    fn the_typed_form_keeps_every_type_and_reads_the_plain_form() {
        let data = Data::new()
            .with("a", 1i64)
            .with("b", true)
            .with("c", 1.0f64)
            .with("d", "x")
            .with("e", Value::S64List(vec![]))
            .with("f", Value::BoolList(vec![]))
            .with("g", Value::F64List(vec![]))
            .with("h", Value::StringList(vec![]))
            .with("i", Value::F64List(vec![2.0, 0.5]));
        assert_eq!(Data::from_typed_json(&data.to_typed_json()), Ok(data.clone()));
        let plain = Data::new().with("a", 1i64).with("i", Value::F64List(vec![2.5]));
        assert_eq!(Data::from_typed_json(&plain.to_json()), Ok(plain));
        for bad in [
            r#"{"a":{"s64":"1"}}"#,
            r#"{"a":{"u8":1}}"#,
            r#"{"a":{"s64":1,"bool":true}}"#,
            "[]",
            "{",
        ] {
            assert!(Data::from_typed_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_round_trips_every_type() {
        let text = r#"{"b":[true,false],"f":[0.5,2.0],"i":[1,2],"s":["a"],"x":1.5,"y":7,"z":"s","t":false}"#;
        let data = Data::from_json(text).unwrap();
        assert_eq!(data.get("f"), Some(&Value::F64List(vec![0.5, 2.0])));
        assert_eq!(data.get("y"), Some(&Value::S64(7)));
        assert_eq!(Data::from_json(&data.to_json()).unwrap(), data);
    }

    #[test]
    fn json_outside_the_types_names_the_key() {
        for (text, key) in [
            (r#"{"a":null}"#, "a"),
            (r#"{"nested":{"x":1}}"#, "nested"),
            (r#"{"m":[1,"x"]}"#, "m"),
            (r#"{"big":18446744073709551615}"#, "big"),
        ] {
            let err = Data::from_json(text).unwrap_err().to_string();
            assert!(err.contains(&format!("{key:?}")), "{err}");
        }
        assert!(matches!(Data::from_json("[1]"), Err(DataError::BadJson(_))));
    }

    #[test]
    fn data_over_ten_kib_names_the_largest_key() {
        let data = Data::new().with("small", 1i64).with("blob", "x".repeat(MAX_DATA_BYTES));
        match data.validate() {
            Err(DataError::TooLarge { largest_key, size }) => {
                assert_eq!(largest_key, "blob");
                assert!(size > MAX_DATA_BYTES);
            }
            other => panic!("{other:?}"),
        }
        let just_fits = Data::new().with("k", "x".repeat(MAX_DATA_BYTES - 8));
        assert_eq!(just_fits.serialized_size(), MAX_DATA_BYTES);
        just_fits.validate().unwrap();
        let escaped = Data::new()
            .with("quote\"d", "tab\t, newline\n, é, \u{1}")
            .with("floats", vec![1.5f64, -0.0, 1e300])
            .with("none", Vec::<String>::new());
        assert_eq!(escaped.serialized_size(), escaped.to_json().len());
    }

    #[test]
    fn non_finite_floats_are_refused() {
        assert_eq!(
            Data::new().with("f", f64::NAN).validate(),
            Err(DataError::NotFinite("f".into()))
        );
    }
}
