//! Write a workhost task handler in Rust as one function.
//!
//! ```ignore
//! use workhost_guest::{Handler, Input, Outcome, Output};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
//!         Output::from(input).success()
//!     }
//! }
//!
//! workhost_guest::export_handler!(Echo);
//! ```
//!
//! The crate wraps the generated bindings of the `workhost:task@0.1.1`
//! `task-handler` world (in [`bindings`]) with typed access to input data
//! ([`Input`]), a builder for output data ([`Output`]) and short forms for the
//! platform imports ([`context`], [`kv`], [`log`], [`config`]: `config::get("url")`
//! reads a configuration value or secret the host granted).

/// Bindings generated from `wit/task.wit`.
#[allow(missing_docs, clippy::all, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "task-handler",
        pub_export_macro: true,
        default_bindings_module: "workhost_guest::bindings",
    });
}

pub use bindings::workhost::task::types::{Outcome, TaskKind, Value};
pub use bindings::workhost::task::{config, context, kv};

/// Task data as it crosses the boundary: key/value pairs.
pub type Data = Vec<(String, Value)>;

/// A task handler: one function from the task's name and input to its outcome.
pub trait Handler {
    /// Runs one task. `Ok(Outcome::Success(output))` succeeds,
    /// `Ok(Outcome::Retry)` asks to run again after the backoff delay, and
    /// `Err(message)` fails the task permanently.
    fn execute(name: &str, input: Input) -> Result<Outcome, String>;
}

/// Exports a type implementing [`Handler`] as the component's
/// `workhost:task/handler` export.
#[macro_export]
macro_rules! export_handler {
    ($ty:ident) => {
        impl $crate::bindings::exports::workhost::task::handler::Guest for $ty {
            fn execute_task(
                name: ::std::string::String,
                input_data: $crate::Data,
            ) -> ::std::result::Result<$crate::Outcome, ::std::string::String> {
                <$ty as $crate::Handler>::execute(&name, $crate::Input::from(input_data))
            }
        }
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

/// A task's input data with typed getters.
#[derive(Debug, Clone, Default)]
pub struct Input {
    data: Data,
}

impl Input {
    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.data.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The integer under `key`, if there is one of that type.
    pub fn i64(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::S64(v) => Some(*v),
            _ => None,
        }
    }

    /// The float under `key`; an integer is widened.
    pub fn f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Value::F64(v) => Some(*v),
            Value::S64(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The boolean under `key`, if there is one of that type.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The string under `key`, if there is one of that type.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(v) => Some(v),
            _ => None,
        }
    }

    /// All pairs, in the order the host sent them.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Takes the pairs out.
    pub fn into_data(self) -> Data {
        self.data
    }
}

impl From<Data> for Input {
    fn from(data: Data) -> Self {
        Input { data }
    }
}

/// Output (or progress) data under construction.
#[derive(Debug, Clone, Default)]
pub struct Output {
    data: Data,
}

impl Output {
    /// Empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `key`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    /// Adds or replaces `key` in place.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.data.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.data.push((key.to_string(), value)),
        }
    }

    /// Ends the run successfully with this output.
    pub fn success(self) -> Result<Outcome, String> {
        Ok(Outcome::Success(self.data))
    }

    /// Takes the pairs out.
    pub fn into_data(self) -> Data {
        self.data
    }
}

impl From<Input> for Output {
    fn from(input: Input) -> Self {
        Output { data: input.data }
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

/// Log lines, kept with the run's record.
pub mod log {
    pub use crate::bindings::workhost::task::log::{Level, write};

    /// Writes a line at level `debug`.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }

    /// Writes a line at level `info`.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }

    /// Writes a line at level `warn`.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }

    /// Writes a line at level `error`.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}
