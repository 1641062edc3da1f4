//! [`CpuFlags`]: a host's CPU flag names, shared between hosts that have the same list.
//!
//! Hosts of a cluster mostly share one CPU model, so their flag lists are equal: decoding a
//! 10,000-host snapshot used to make 10,000 copies of the same ~20 names (most of a guest's
//! allocations for a full snapshot, and most of its string decoding). A list equal to the one
//! decoded just before it on the same thread shares its storage instead; the wire format (a
//! sequence of strings), JSON and TOML are unchanged.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::ops::Deref;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A host's CPU flags: a list of names, cheap to clone (shared storage), read as a slice.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct CpuFlags(Arc<[String]>);

std::thread_local! {
    /// The flag list this thread decoded last: the next equal list shares it.
    static LAST_DECODED: RefCell<Option<Arc<[String]>>> = const { RefCell::new(None) };
}

impl CpuFlags {
    /// Whether both lists are the same storage or hold the same names (the storage
    /// comparison first: shared lists compare in one step).
    pub fn same_as(&self, other: &CpuFlags) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }

    /// The names as a slice.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Deref for CpuFlags {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Debug for CpuFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl From<Vec<String>> for CpuFlags {
    fn from(names: Vec<String>) -> Self {
        CpuFlags(names.into())
    }
}

impl FromIterator<String> for CpuFlags {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Self {
        CpuFlags(names.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a CpuFlags {
    type Item = &'a String;
    type IntoIter = core::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for CpuFlags {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter())
    }
}

impl<'de> Deserialize<'de> for CpuFlags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(FlagsVisitor)
    }
}

struct FlagsVisitor;

impl<'de> Visitor<'de> for FlagsVisitor {
    type Value = CpuFlags;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of CPU flag names")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CpuFlags, A::Error> {
        let last = LAST_DECODED.with(|l| l.borrow().clone());
        let previous: &[String] = last.as_deref().unwrap_or(&[]);
        // Names equal to the previous list's so far; a list of its own from the first
        // difference on.
        let mut matched = 0;
        let mut own: Option<Vec<String>> = None;
        while let Some(name) = seq.next_element::<Name<'de>>()? {
            match &mut own {
                Some(list) => list.push(name.into_string()?),
                None if previous
                    .get(matched)
                    .is_some_and(|p| p.as_bytes() == name.as_bytes()) =>
                {
                    matched += 1;
                }
                None => {
                    let mut list = Vec::with_capacity(matched + 1 + seq.size_hint().unwrap_or(0));
                    list.extend_from_slice(&previous[..matched]);
                    list.push(name.into_string()?);
                    own = Some(list);
                }
            }
        }
        let flags = match own {
            Some(list) => Arc::from(list),
            None if matched == previous.len() => last.unwrap_or_else(|| Arc::from([])),
            None => Arc::from(&previous[..matched]),
        };
        LAST_DECODED.with(|l| *l.borrow_mut() = Some(flags.clone()));
        Ok(CpuFlags(flags))
    }
}

/// One flag name as the decoder has it: borrowed from the input when it can be (bincode),
/// owned otherwise (text formats with escapes). From a binary format the name is read as
/// bytes: compared with the previous list's name as they are, and checked to be UTF-8 only
/// when it differs (a string's bincode form is its bytes).
enum Name<'de> {
    Borrowed(&'de str),
    Bytes(&'de [u8]),
    Owned(String),
}

impl Name<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Borrowed(s) => s.as_bytes(),
            Name::Bytes(b) => b,
            Name::Owned(s) => s.as_bytes(),
        }
    }

    fn into_string<E: serde::de::Error>(self) -> Result<String, E> {
        match self {
            Name::Borrowed(s) => Ok(s.into()),
            Name::Bytes(b) => core::str::from_utf8(b)
                .map(String::from)
                .map_err(|_| E::custom("a CPU flag name is not UTF-8")),
            Name::Owned(s) => Ok(s),
        }
    }
}

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU flag name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name::Owned(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
                Ok(Name::Owned(v))
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Name<'de>, E> {
                Ok(Name::Bytes(v))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Name<'de>, E> {
                core::str::from_utf8(v)
                    .map(|s| Name::Owned(s.into()))
                    .map_err(|_| E::custom("a CPU flag name is not UTF-8"))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(NameVisitor)
        } else {
            deserializer.deserialize_bytes(NameVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;

    fn flags(names: &[&str]) -> CpuFlags {
        names.iter().map(|n| String::from(*n)).collect()
    }

    #[test]
    fn equal_lists_decoded_one_after_another_share_storage_and_encode_as_plain_lists() {
        let a = flags(&["aes", "avx2", "sse4_2"]);
        let bytes = codec::encode(&a).unwrap();
        let plain: Vec<String> = a.to_vec();
        assert_eq!(
            bytes,
            codec::encode(&plain).unwrap(),
            "same bytes as a list"
        );
        let first: CpuFlags = codec::decode(&bytes).unwrap();
        let second: CpuFlags = codec::decode(&bytes).unwrap();
        assert_eq!(first, a);
        assert!(Arc::ptr_eq(&first.0, &second.0), "shared");
        // A longer list, a prefix, a different one, an empty one: each decodes to itself.
        for names in [
            &["aes", "avx2", "sse4_2", "vmx"][..],
            &["aes", "avx2"],
            &["aes", "x", "sse4_2"],
            &[],
            &["aes", "avx2", "sse4_2"],
        ] {
            let decoded: CpuFlags = codec::decode(&codec::encode(&flags(names)).unwrap()).unwrap();
            assert_eq!(decoded.as_slice(), flags(names).as_slice(), "{names:?}");
        }
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"["aes","avx2","sse4_2"]"#);
        assert_eq!(serde_json::from_str::<CpuFlags>(&json).unwrap(), a);
        assert_eq!(
            serde_json::from_str::<CpuFlags>(r#"["a\"b"]"#)
                .unwrap()
                .as_slice(),
            ["a\"b"],
            "escaped names decode owned"
        );
    }

    #[test]
    fn a_flag_name_that_is_not_utf8_fails_the_decode() {
        // One name of two bytes, 0xff 0xfe.
        let bytes = [1u8, 2, 0xff, 0xfe];
        let err = codec::decode::<CpuFlags>(&bytes).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
