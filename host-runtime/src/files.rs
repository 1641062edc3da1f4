//! Reading operator-written documents (cluster, VM, policy, events) as JSON or TOML, with
//! errors that name the file and the field at fault.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// Document formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// TOML.
    Toml,
}

impl Format {
    /// The format for a path: TOML for `.toml`, JSON otherwise.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("toml") => Format::Toml,
            _ => Format::Json,
        }
    }
}

/// Reads and parses a document; the format follows the file extension.
pub fn read_document<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(&label, format!("cannot read: {e}")))?;
    parse_document(&text, Format::of(path), &label)
}

/// Parses a document held in memory; `label` names it in errors.
pub fn parse_document<T: DeserializeOwned>(text: &str, format: Format, label: &str) -> Result<T> {
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let value: T = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| field_error(label, e.path().to_string(), e.inner().to_string()))?;
            de.end()
                .map_err(|e| Error::input(label, None, e.to_string()))?;
            Ok(value)
        }
        Format::Toml => {
            let de = toml::Deserializer::new(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let message = e.inner().message().to_string();
                let message = match e.inner().span() {
                    Some(span) => {
                        let line = text[..span.start.min(text.len())].lines().count().max(1);
                        format!("{message} (line {line})")
                    }
                    None => message,
                };
                field_error(label, e.path().to_string(), message)
            })
        }
    }
}

fn field_error(label: &str, path: String, message: String) -> Error {
    let field = (path != "." && !path.is_empty()).then_some(path);
    Error::input(label, field, message)
}
