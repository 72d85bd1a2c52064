//! Configuration values and secrets granted to a handler, read by the guest
//! through the `config` import, and the [`Redactor`] that keeps secrets out
//! of what a run leaves behind (its log, failure message, output and
//! progress).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::data::{Data, Value};

/// Longest configuration key, in bytes.
pub const MAX_CONFIG_KEY_BYTES: usize = 128;
/// Largest configuration value, in bytes.
pub const MAX_CONFIG_VALUE_BYTES: usize = 64 << 10;
/// Largest secret, in bytes: well under the 4 KiB at which a run's stdout
/// is cut into lines, so the bytes held back while a secret may still be
/// completing stay small.
pub const MAX_SECRET_BYTES: usize = 1024;
/// What a secret is replaced with wherever the host removes it.
pub const REDACTED: &str = "[redacted]";

/// One configuration value. A secret is a value the host also removes from
/// everything the run leaves behind; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigValue {
    /// The value.
    pub value: String,
    /// Whether it is a secret.
    pub secret: bool,
}

impl ConfigValue {
    /// A plain configuration value.
    pub fn plain(value: impl Into<String>) -> ConfigValue {
        ConfigValue {
            value: value.into(),
            secret: false,
        }
    }

    /// A secret.
    pub fn secret(value: impl Into<String>) -> ConfigValue {
        ConfigValue {
            value: value.into(),
            secret: true,
        }
    }
}

impl std::fmt::Debug for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secret {
            f.write_str("ConfigValue::secret([redacted])")
        } else {
            write!(f, "ConfigValue::plain({:?})", self.value)
        }
    }
}

/// A configuration key or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key is not `[A-Za-z_][A-Za-z0-9_]*` of at most 128 bytes.
    #[error(
        "config key {0:?} is not a name: use letters, digits and `_`, not starting with a digit, at most 128 bytes (so it can also be an environment variable)"
    )]
    BadKey(String),
    /// The value is over 64 KiB.
    #[error("config value of {key:?} is {len} bytes; the limit is 65536")]
    TooLarge {
        /// The key.
        key: String,
        /// The value's length.
        len: usize,
    },
    /// A secret is over [`MAX_SECRET_BYTES`].
    #[error(
        "secret {key:?} is {len} bytes; the limit for a secret is 1024 (keep large material in a granted file and the secret that unlocks it here)"
    )]
    SecretTooLarge {
        /// The key.
        key: String,
        /// The secret's length.
        len: usize,
    },
    /// A secret is empty (an empty secret cannot be redacted).
    #[error("secret {0:?} is empty")]
    EmptySecret(String),
}

/// Checks a key and its value.
pub fn check_config(key: &str, value: &ConfigValue) -> Result<(), ConfigError> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || key.len() > MAX_CONFIG_KEY_BYTES || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ConfigError::BadKey(key.to_string()));
    }
    if value.value.len() > MAX_CONFIG_VALUE_BYTES {
        return Err(ConfigError::TooLarge {
            key: key.to_string(),
            len: value.value.len(),
        });
    }
    if value.secret && value.value.len() > MAX_SECRET_BYTES {
        return Err(ConfigError::SecretTooLarge {
            key: key.to_string(),
            len: value.value.len(),
        });
    }
    if value.secret && value.value.is_empty() {
        return Err(ConfigError::EmptySecret(key.to_string()));
    }
    Ok(())
}

/// What [`Redactor::at`] found at the start of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// A whole secret of this many bytes.
    Secret(usize),
    /// The bytes end inside a possible secret: wait for more.
    Maybe,
    /// No secret starts here.
    No,
}

/// Replaces every secret of a handler with [`REDACTED`] in text and data.
/// Longer secrets are replaced first, so one secret inside another never
/// leaves the outer one half visible.
#[derive(Clone, Default)]
pub(crate) struct Redactor(Option<Arc<Vec<String>>>);

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.as_ref().map_or(0, |s| s.len());
        write!(f, "Redactor({n} secrets)")
    }
}

impl Redactor {
    /// A redactor of the secrets among `config`.
    pub(crate) fn new(config: &BTreeMap<String, ConfigValue>) -> Redactor {
        let mut secrets: Vec<String> = config
            .values()
            .filter(|v| v.secret && !v.value.is_empty())
            .map(|v| v.value.clone())
            .collect();
        if secrets.is_empty() {
            return Redactor(None);
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor(Some(Arc::new(secrets)))
    }

    /// Whether a secret starts at the beginning of `bytes`: `Secret(len)`
    /// for a whole one (the longest), `Maybe` when `bytes` ends inside what
    /// could still become one (never when `last`), else `No`.
    pub(crate) fn at(&self, bytes: &[u8], last: bool) -> Match {
        let Some(secrets) = &self.0 else { return Match::No };
        let mut maybe = false;
        for s in secrets.iter() {
            let s = s.as_bytes();
            if bytes.starts_with(s) {
                return Match::Secret(s.len());
            }
            if !last && bytes.len() < s.len() && s.starts_with(bytes) {
                maybe = true;
            }
        }
        if maybe { Match::Maybe } else { Match::No }
    }

    /// `text` with every secret replaced.
    pub(crate) fn text(&self, text: String) -> String {
        let Some(secrets) = &self.0 else { return text };
        let mut text = text;
        for s in secrets.iter() {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), REDACTED);
            }
        }
        text
    }

    /// `data` with every secret replaced in its string values and keys.
    pub(crate) fn data(&self, data: Data) -> Data {
        if self.0.is_none() {
            return data;
        }
        let pairs = data.iter().map(|(k, v)| {
            let v = match v {
                Value::String(s) => Value::String(self.text(s.clone())),
                Value::StringList(l) => Value::StringList(l.iter().map(|s| self.text(s.clone())).collect()),
                other => other.clone(),
            };
            (self.text(k.clone()), v)
        });
        let mut out = Data::new();
        for (k, v) in pairs {
            out.insert(k, v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_names() {
        for ok in ["url", "API_TOKEN", "_x1"] {
            check_config(ok, &ConfigValue::plain("v")).unwrap();
        }
        for bad in ["", "1x", "a-b", "a.b", "a b", &"k".repeat(129)] {
            assert!(
                matches!(check_config(bad, &ConfigValue::plain("v")), Err(ConfigError::BadKey(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check_config("k", &ConfigValue::plain("v".repeat(MAX_CONFIG_VALUE_BYTES + 1))),
            Err(ConfigError::TooLarge { .. })
        ));
        assert_eq!(
            check_config("k", &ConfigValue::secret("")),
            Err(ConfigError::EmptySecret("k".into()))
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", ConfigValue::secret("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(format!("{:?}", ConfigValue::plain("visible")).contains("visible"));
    }

    #[test]
    fn redacts_longest_first_in_text_and_data() {
        let mut config = BTreeMap::new();
        config.insert("a".to_string(), ConfigValue::secret("abc"));
        config.insert("b".to_string(), ConfigValue::secret("xxabcxx"));
        config.insert("c".to_string(), ConfigValue::plain("plain"));
        let r = Redactor::new(&config);
        assert_eq!(
            r.text("1 xxabcxx 2 abc plain".into()),
            "1 [redacted] 2 [redacted] plain"
        );
        let data = Data::new()
            .with("s", "token=abc")
            .with("l", Value::StringList(vec!["abc".into(), "ok".into()]))
            .with("n", 3i64);
        let out = r.data(data);
        assert_eq!(out.get("s"), Some(&Value::String("token=[redacted]".into())));
        assert_eq!(
            out.get("l"),
            Some(&Value::StringList(vec!["[redacted]".into(), "ok".into()]))
        );
        assert_eq!(out.get("n"), Some(&Value::S64(3)));
        assert_eq!(Redactor::default().text("abc".into()), "abc");
    }
}
