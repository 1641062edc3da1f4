//! The wire codec: serde + bincode 2 in its standard configuration (little endian,
//! variable-length integers). Every byte that crosses the ABI goes through this module, so
//! the wire format can change in this one file.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::Serialize;

/// Largest message either side accepts (64 MiB): bounds allocations driven by a length
/// prefix inside a message.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_MESSAGE_BYTES>,
>;

const CONFIG: Config = bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>();

/// A message that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for CodecError {}

/// Encodes a value into a fresh buffer.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Encodes a value, replacing the contents of `out` (its capacity is reused).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.clear();
    crate::model::flags::start_message();
    bincode::serde::encode_into_writer(value, VecWriter(out), CONFIG)
        .map_err(|e| CodecError(e.to_string()))
}

/// Decodes a value that must span the whole buffer.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_seed(PhantomData::<T>, bytes)
}

/// Decodes a value that must span the whole buffer with `seed`, which may decode into
/// storage it holds (see [`decode_sync_into`](crate::wire::sync::decode_sync_into)).
pub fn decode_seed<'de, S: DeserializeSeed<'de>>(
    seed: S,
    bytes: &'de [u8],
) -> Result<S::Value, CodecError> {
    crate::model::flags::start_message();
    let (value, used) = bincode::serde::seed_decode_from_slice(seed, bytes, CONFIG)
        .map_err(|e| CodecError(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError(alloc::format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        // Most writes are a one-byte varint or variant index: a push, not a copy call.
        match bytes {
            [byte] => self.0.push(*byte),
            _ => self.0.extend_from_slice(bytes),
        }
        Ok(())
    }
}
