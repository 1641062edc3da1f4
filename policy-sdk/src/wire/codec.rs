//! The wire codec: serde + bincode 2 in its standard configuration (little endian,
//! variable-length integers). Every byte that crosses the ABI goes through this module, so
//! the wire format can change in this one file. The one message of every decision, a
//! batch's answer, is also written and read by hand through [`raw`]
//! ([`BatchResponse::encode_into`](crate::wire::abi::BatchResponse::encode_into) and
//! [`BatchResponse::decode`](crate::wire::abi::BatchResponse::decode)), to the same bytes:
//! a change of the format here must change those too (their tests compare them with serde).

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

/// The codec's format written and read by hand, for the messages of every decision (a
/// batch's answer), where serde's generic visitors cost more than the bytes they move.
/// A type's hand-written form must give exactly the bytes of its serde form; each use is
/// tested against serde (see [`BatchResponse`](crate::wire::abi::BatchResponse)).
///
/// The format is bincode's standard one: an integer below 251 is one byte, else a marker
/// byte (251, 252, 253) and its 2, 4 or 8 little-endian bytes; signed integers zigzag
/// first; lengths, variant indices, strings and byte strings as bincode writes them.
pub mod raw {
    use alloc::string::String;
    use alloc::vec::Vec;

    const U16_MARK: u8 = 251;
    const U32_MARK: u8 = 252;
    const U64_MARK: u8 = 253;

    /// Appends an unsigned integer.
    #[inline]
    pub fn put_u64(out: &mut Vec<u8>, v: u64) {
        if v < u64::from(U16_MARK) {
            out.push(v as u8);
        } else if v <= u64::from(u16::MAX) {
            out.push(U16_MARK);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= u64::from(u32::MAX) {
            out.push(U32_MARK);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            out.push(U64_MARK);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Appends a signed integer.
    #[inline]
    pub fn put_i64(out: &mut Vec<u8>, v: i64) {
        put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
    }

    /// Appends a length (of a sequence, string or byte string).
    #[inline]
    pub fn put_len(out: &mut Vec<u8>, len: usize) {
        put_u64(out, len as u64);
    }

    /// Appends a string.
    #[inline]
    pub fn put_str(out: &mut Vec<u8>, s: &str) {
        put_len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// Reads the format from a byte slice. Every read answers `None` for anything it does
    /// not take as the serde form would (a cut message, a marker that does not fit the
    /// integer, a length past the end, a string that is not UTF-8): the caller then leaves
    /// the message to serde, whose error is the one reported.
    #[derive(Debug, Clone)]
    pub struct Reader<'a> {
        bytes: &'a [u8],
    }

    impl<'a> Reader<'a> {
        /// A reader of `bytes`.
        pub fn new(bytes: &'a [u8]) -> Self {
            Reader { bytes }
        }

        /// Whether every byte was read.
        pub fn is_done(&self) -> bool {
            self.bytes.is_empty()
        }

        /// The next `n` bytes.
        #[inline]
        pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if n > self.bytes.len() {
                return None;
            }
            let (head, rest) = self.bytes.split_at(n);
            self.bytes = rest;
            Some(head)
        }

        #[inline]
        fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
            self.take(N)?.try_into().ok()
        }

        /// An unsigned integer of at most `max_mark`'s width.
        #[inline]
        fn unsigned(&mut self, max_mark: u8) -> Option<u64> {
            let [first] = self.array::<1>()?;
            match first {
                byte if byte < U16_MARK => Some(u64::from(byte)),
                U16_MARK => Some(u64::from(u16::from_le_bytes(self.array()?))),
                U32_MARK if max_mark >= U32_MARK => {
                    Some(u64::from(u32::from_le_bytes(self.array()?)))
                }
                U64_MARK if max_mark >= U64_MARK => Some(u64::from_le_bytes(self.array()?)),
                _ => None,
            }
        }

        /// A `u32`.
        #[inline]
        pub fn u32(&mut self) -> Option<u32> {
            self.unsigned(U32_MARK).map(|v| v as u32)
        }

        /// A `u64`.
        #[inline]
        pub fn u64(&mut self) -> Option<u64> {
            self.unsigned(U64_MARK)
        }

        /// An `i64`.
        #[inline]
        pub fn i64(&mut self) -> Option<i64> {
            let v = self.u64()?;
            Some(((v >> 1) as i64) ^ -((v & 1) as i64))
        }

        /// A length, which must fit in what is left (every element takes at least a byte).
        #[inline]
        pub fn length(&mut self) -> Option<usize> {
            let len = usize::try_from(self.u64()?).ok()?;
            (len <= self.bytes.len()).then_some(len)
        }

        /// A byte string.
        #[inline]
        pub fn bytes(&mut self) -> Option<&'a [u8]> {
            let len = self.length()?;
            self.take(len)
        }

        /// A string.
        #[inline]
        pub fn string(&mut self) -> Option<String> {
            let bytes = self.bytes()?;
            core::str::from_utf8(bytes).ok().map(String::from)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Integers around every width's edge read back as written, and as serde writes
        /// them.
        #[test]
        fn integers_are_written_and_read_as_serde_does() {
            let mut values: Vec<u64> = vec![0, 1, 250, 251, 252, 253, 254, 255, 256];
            for bits in [16u32, 32, 63, 64] {
                let edge = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                values.extend([edge - 1, edge, edge.wrapping_add(1)]);
            }
            for v in values {
                let mut out = Vec::new();
                put_u64(&mut out, v);
                assert_eq!(out, crate::wire::codec::encode(&v).unwrap(), "u64 {v}");
                assert_eq!(Reader::new(&out).u64(), Some(v), "u64 {v}");
                for signed in [
                    v as i64,
                    (v as i64).wrapping_neg(),
                    (v >> 1) as i64,
                    -((v >> 1) as i64),
                ] {
                    let mut out = Vec::new();
                    put_i64(&mut out, signed);
                    assert_eq!(
                        out,
                        crate::wire::codec::encode(&signed).unwrap(),
                        "i64 {signed}"
                    );
                    assert_eq!(Reader::new(&out).i64(), Some(signed), "i64 {signed}");
                }
                if let Ok(small) = u32::try_from(v) {
                    let bytes = crate::wire::codec::encode(&small).unwrap();
                    assert_eq!(Reader::new(&bytes).u32(), Some(small), "u32 {small}");
                } else {
                    assert_eq!(Reader::new(&out).u32(), None, "{v} is not a u32");
                }
            }
        }
    }
}
