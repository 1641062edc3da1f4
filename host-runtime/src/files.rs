//! Reading operator-written documents (cluster, VM, policy, events) as JSON or TOML, with
//! errors that name the file and the field at fault.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::io::Read;
use std::path::Path;

/// Largest document (cluster, VM, policy, events) accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: u64 = 512 << 20;

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
    let text = read_text(path, MAX_DOCUMENT_BYTES)?;
    parse_document(&text, Format::of(path), &label)
}

/// Reads a UTF-8 text file of at most `limit` bytes (see [`read_bounded`]).
pub(crate) fn read_text(path: &Path, limit: u64) -> Result<String> {
    let label = path.display().to_string();
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::input(
            &label,
            None,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads a whole file of at most `limit` bytes. The file's metadata is checked before it is
/// opened (a regular file no larger than `limit`; a FIFO, a device such as `/dev/zero`, a
/// directory or a file above the limit is refused at once), it is opened without blocking
/// and checked again, and at most `limit` bytes are ever read, so a file that grows while
/// it is read is refused too. Errors name the file.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    read_limited(path, limit).map_err(|why| Error::io(path.display().to_string(), why))
}

/// [`read_bounded`] with the reason as a plain message (the caller names the file).
pub(crate) fn read_limited(path: &Path, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    check_regular(&meta, limit)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Swapped for a FIFO between the check and the open: do not wait for a writer.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    check_regular(&meta, limit)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "grew past the limit of {} while being read",
            show_size(limit)
        ));
    }
    Ok(bytes)
}

/// A regular file no larger than `limit`, or why not.
fn check_regular(meta: &std::fs::Metadata, limit: u64) -> std::result::Result<(), String> {
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(format!(
            "not a regular file ({}); refusing to read it",
            describe_kind(&kind)
        ));
    }
    if meta.len() > limit {
        return Err(format!(
            "is {} bytes, above the limit of {}",
            meta.len(),
            show_size(limit)
        ));
    }
    Ok(())
}

fn describe_kind(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}

fn show_size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
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
