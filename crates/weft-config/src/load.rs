//! Loading a config: read the TOML file, apply `--set section.key=value` overrides on the
//! tree, deserialize, validate; every error names the key and where its value came from.

use std::path::PathBuf;

use crate::error::ConfigError;
use crate::Config;

/// Reads a config file, applies overrides, validates.
#[derive(Debug, Default, Clone)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    overrides: Vec<String>,
}

impl ConfigLoader {
    /// A loader that starts from the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read this TOML file (relative paths inside stay as written).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Read this file if `Some`.
    pub fn maybe_file(mut self, path: Option<impl Into<PathBuf>>) -> Self {
        self.file = path.map(Into::into);
        self
    }

    /// Add `section.key=value` overrides; the value is parsed as TOML, or taken as a string.
    pub fn overrides<I, S>(mut self, sets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.overrides.extend(sets.into_iter().map(Into::into));
        self
    }

    /// Read, override, deserialize and validate.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let file_origin = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".to_string());
        let mut tree = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax {
                        path: path.clone(),
                        message: e.to_string().trim().to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut set_keys: Vec<(String, String)> = Vec::new();
        for raw in &self.overrides {
            let (key, value) = parse_override(raw)?;
            apply_override(&mut tree, &key, value).map_err(|message| ConfigError::BadOverride {
                raw: raw.clone(),
                message,
            })?;
            set_keys.push((key, raw.clone()));
        }
        let origin_of = |key: &str| -> String {
            // The last override that set this key or one of its parents.
            set_keys
                .iter()
                .rev()
                .find(|(k, _)| {
                    key == k
                        || key.starts_with(&format!("{k}."))
                        || k.starts_with(&format!("{key}."))
                })
                .map(|(_, raw)| format!("--set {raw}"))
                .unwrap_or_else(|| file_origin.clone())
        };
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
                let key = e.path().to_string();
                let message = friendly_serde_message(&e.inner().to_string());
                ConfigError::Invalid {
                    origin: origin_of(&key),
                    key,
                    message,
                }
            })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin_of(&key),
                key,
                message,
            })?;
        Ok(config)
    }
}

fn parse_override(raw: &str) -> Result<(String, toml::Value), ConfigError> {
    let bad = |message: &str| ConfigError::BadOverride {
        raw: raw.to_string(),
        message: message.to_string(),
    };
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| bad("expected section.key=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|part| part.trim().is_empty()) {
        return Err(bad("expected section.key=value"));
    }
    let value = value.trim();
    // A TOML value (number, bool, array, quoted string) or else a bare string.
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    Ok((key.to_string(), parsed))
}

fn apply_override(tree: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').map(str::trim).collect();
    let (last, parents) = parts.split_last().expect("key has at least one part");
    let mut table = tree;
    let mut walked = String::new();
    for part in parents {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("{walked} is not a section")),
        };
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// Turn serde's `invalid type: string "abc", expected usize` into
/// `expected an integer >= 0, found "abc"`.
fn friendly_serde_message(message: &str) -> String {
    let message = message.trim();
    let message = message.lines().next().unwrap_or(message);
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            let found = found
                .strip_prefix("string ")
                .map(str::to_string)
                .unwrap_or_else(|| found.to_string());
            return format!("expected {}, found {found}", friendly_type(expected));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, found {found}", friendly_type(expected));
        }
    }
    message.to_string()
}

fn friendly_type(expected: &str) -> String {
    match expected {
        "usize" | "u8" | "u16" | "u32" | "u64" => "an integer >= 0".to_string(),
        "i32" | "i64" | "isize" => "an integer".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "bool" => "a boolean".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_messages() {
        assert_eq!(
            friendly_serde_message("invalid type: string \"abc\", expected usize"),
            "expected an integer >= 0, found \"abc\""
        );
        assert_eq!(
            friendly_serde_message("invalid type: integer `3`, expected a boolean"),
            "expected a boolean, found integer `3`"
        );
        // A negative count: serde's "invalid value", and the type says why it is invalid.
        assert_eq!(
            friendly_serde_message("invalid value: integer `-3`, expected u64"),
            "expected an integer >= 0, found integer `-3`"
        );
    }

    #[test]
    fn override_parsing() {
        let (k, v) = parse_override("data.image_size=96").unwrap();
        assert_eq!(k, "data.image_size");
        assert_eq!(v, toml::Value::Integer(96));
        let (_, v) = parse_override("data.text_column=caption").unwrap();
        assert_eq!(v, toml::Value::String("caption".into()));
        let (_, v) = parse_override("data.train=[\"a\", \"b\"]").unwrap();
        assert!(matches!(v, toml::Value::Array(_)));
        assert!(parse_override("novalue").is_err());
        assert!(parse_override(".x=1").is_err());
    }
}
