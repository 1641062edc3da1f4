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
                let mut path = e.path().to_string();
                let message = match e.inner().span() {
                    Some(span) => {
                        let at = span.start.min(text.len());
                        let line = text[..at].lines().count().max(1);
                        // Errors of the TOML parser itself (a number too large for any
                        // integer) come before serde knows the field: name it from the text.
                        if path == "." || path.is_empty() {
                            path = toml_key_at(text, at).unwrap_or(path);
                        }
                        format!("{message} (line {line})")
                    }
                    None => message,
                };
                field_error(label, path, message)
            })
        }
    }
}

fn field_error(label: &str, path: String, message: String) -> Error {
    let field = (path != "." && !path.is_empty()).then_some(path);
    Error::input(label, field, message)
}

/// The path of the key on the line at byte `offset` of a TOML text, with the table it is
/// in: `filters[0].deadline_ms` for a `deadline_ms = ...` line after the first
/// `[[filters]]`, `filters[1].params.overhead_mb` inside `[filters.params]` of the second.
fn toml_key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<&str, usize> = Default::default();
    for line in text[..line_start].lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            let n = arrays.entry(name).and_modify(|n| *n += 1).or_insert(0);
            table = format!("{name}[{n}]");
        } else if let Some(name) = line.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let name = name.trim();
            let (head, rest) = name.split_once('.').unwrap_or((name, ""));
            table = match (arrays.get(head), rest) {
                (Some(n), "") => format!("{head}[{n}]"),
                (Some(n), rest) => format!("{head}[{n}].{rest}"),
                (None, _) => name.to_string(),
            };
        }
    }
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    Some(if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    })
}
